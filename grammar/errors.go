package grammar

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// Pos is a position in a configuration file. Its String method gives
// FILE:LINE:COL.
type Pos = lexer.Position

// An Error is one problem at one place in a configuration file.
type Error struct {
	Pos Pos
	Msg string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.Pos.Filename, e.Pos.Line, e.Pos.Column, e.Msg)
}

// Errorf returns an *Error at pos.
func Errorf(pos Pos, format string, args ...any) *Error {
	return &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

// An ErrorList holds every error found in one or more files, in the style of
// go/scanner.ErrorList. Its Error method prints one error per line, sorted by
// file, line and column.
type ErrorList []*Error

// Add appends an error at pos.
func (l *ErrorList) Add(pos Pos, format string, args ...any) {
	*l = append(*l, Errorf(pos, format, args...))
}

// Sort sorts the list by file, line and column; the order of errors at the
// same position is kept.
func (l ErrorList) Sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i].Pos, l[j].Pos
		if a.Filename != b.Filename {
			return a.Filename < b.Filename
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Err returns l as an error, sorted, or nil when l is empty.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	l.Sort()
	return l
}

// Errors returns the *Error values held by err: an ErrorList, one *Error, or a
// join of them. Other errors yield nothing.
func Errors(err error) []*Error {
	var l ErrorList
	if errors.As(err, &l) {
		return l
	}
	var e *Error
	if errors.As(err, &e) {
		return []*Error{e}
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*Error
		for _, e := range j.Unwrap() {
			out = append(out, Errors(e)...)
		}
		return out
	}
	return nil
}

// syntaxError turns a participle error into an *Error. The grammars are
// written so that participle itself accepts any sequence of tokens; the
// precise messages come from the checks that build the AST.
func syntaxError(err error) *Error {
	var perr participle.Error
	if !errors.As(err, &perr) {
		return &Error{Msg: err.Error()}
	}
	pos := perr.Position()
	var ute *participle.UnexpectedTokenError
	if errors.As(err, &ute) {
		return &Error{Pos: pos, Msg: fmt.Sprintf("unexpected %s", describe(ute.Unexpected))}
	}
	return &Error{Pos: pos, Msg: perr.Message()}
}

// describe names a token for an error message.
func describe(t lexer.Token) string {
	if t.EOF() {
		return "end of line"
	}
	return fmt.Sprintf("%q", t.Value)
}
