package grammar

import (
	"strings"
	"unicode/utf8"

	"github.com/alecthomas/participle/v2/lexer"
)

// The fast path. Parsing a line with participle costs some 20 µs and
// dozens of allocations, most of a 10,000-line file's load time. Most
// lines are plain rules, though: an action, ?=, *=, one or two hosts, a
// port test and a command. fastSockdLine lexes and parses exactly those by
// hand, into the very sockdLine (positions and tokens included) that
// participle builds for them, and declines anything else — specials,
// errors, stray or unusual tokens, non-ASCII before a command or comment —
// which then goes to participle as before. So the AST, every error and
// every position stay what participle makes of the line; FuzzSockdFastPath
// checks that the two agree on every line the fast path takes.

// Token types of sockdLexer, for the tokens the fast path makes.
var (
	symWord     = sockdLexer.Symbols()["Word"]
	symCIDR     = sockdLexer.Symbols()["CIDR"]
	symBracket  = sockdLexer.Symbols()["Bracket"]
	symIdentOpt = sockdLexer.Symbols()["IdentOpt"]
	symUsersEq  = sockdLexer.Symbols()["UsersEq"]
	symItem     = sockdLexer.Symbols()["Item"]
	symColon    = sockdLexer.Symbols()["Colon"]
	symCmdText  = sockdLexer.Symbols()["CmdText"]
)

// fastSockdLine parses one plain rule line the way participle does, or
// reports false. The tokens of the line (which its hostSyntax and
// portSyntax hold) are kept in *buf, which the next line reuses: the
// result is for addSockdLine, which keeps none of it.
func fastSockdLine(filename string, pl physLine, buf *[]lexer.Token) (*sockdLine, bool) {
	toks, ok := fastLex(filename, pl, (*buf)[:0])
	*buf = toks
	if !ok || len(toks) == 0 || toks[0].Type != symWord {
		return nil, false
	}
	r := &ruleSyntax{Pos: toks[0].Pos, Action: toks[0].Value}
	i := 1
	if i < len(toks) && toks[i].Type == symIdentOpt {
		r.Ident = &identSyntax{Pos: toks[i].Pos, Text: toks[i].Value}
		i++
	}
	if i < len(toks) && toks[i].Type == symUsersEq {
		r.Users = &listSyntax{Pos: toks[i].Pos}
		i++
		if i < len(toks) && toks[i].Type == symItem {
			r.Users.Text = toks[i].Value
			i++
		}
	}
	if r.Src, i = fastHost(toks, i); r.Src == nil {
		return nil, false
	}
	r.Dst, i = fastHost(toks, i)
	if i < len(toks) && isPortOp(toks[i]) {
		if i+1 == len(toks) || toks[i+1].Type != symWord {
			return nil, false
		}
		r.Port = &portSyntax{Pos: toks[i].Pos, Tokens: toks[i : i+2], Op: toks[i].Value, Port: toks[i+1].Value}
		i += 2
	}
	if i < len(toks) && toks[i].Type == symColon {
		r.Cmd = &cmdSyntax{Pos: toks[i].Pos}
		i++
		if i < len(toks) && toks[i].Type == symCmdText {
			r.Cmd.Text = toks[i].Value
			i++
		}
	}
	if i != len(toks) {
		return nil, false // stray tokens: participle says where
	}
	return &sockdLine{Rule: r}, true
}

// fastHost parses a host at toks[i] as hostSyntax does: a CIDR, a bracket,
// or a word and its mask (neither a port operator). A word without a mask
// (an error) is declined, as nil with i unchanged.
func fastHost(toks []lexer.Token, i int) (*hostSyntax, int) {
	if i == len(toks) {
		return nil, i
	}
	t := toks[i]
	switch {
	case t.Type == symCIDR:
		return &hostSyntax{Pos: t.Pos, Tokens: toks[i : i+1], CIDR: t.Value}, i + 1
	case t.Type == symBracket:
		return &hostSyntax{Pos: t.Pos, Tokens: toks[i : i+1], V6: t.Value}, i + 1
	case t.Type == symWord && !isPortOp(t) && i+1 < len(toks) && toks[i+1].Type == symWord && !isPortOp(toks[i+1]):
		return &hostSyntax{Pos: t.Pos, Tokens: toks[i : i+2], Word: t.Value, Mask: toks[i+1].Value}, i + 2
	}
	return nil, i
}

// isPortOp reports whether t is a port operator, as the grammar's
// case-insensitive literals 'eq' ... 'ge' match words.
func isPortOp(t lexer.Token) bool {
	if t.Type != symWord || len(t.Value) > 3 {
		return false
	}
	for _, op := range opNames {
		if strings.EqualFold(t.Value, op) {
			return true
		}
	}
	return false
}

// fastLex lexes a line as sockdLexer does, for lines whose tokens are
// ASCII and of the kinds fastSockdLine parses: words, CIDRs, brackets, ?=,
// *= and its list, ':' and its command, blanks and a comment. Anything else
// (#NO_IDENTD: and the like, @=, a stray '[' or ']', other bytes) is
// declined. It appends the tokens to toks.
func fastLex(filename string, pl physLine, toks []lexer.Token) ([]lexer.Token, bool) {
	s := pl.text
	emit := func(typ lexer.TokenType, start, end int) {
		toks = append(toks, lexer.Token{Type: typ, Value: s[start:end],
			Pos: lexer.Position{Filename: filename, Offset: pl.offset + start, Line: pl.num, Column: start + 1}})
	}
	// run returns the end of the run of bytes from i that in accepts, and
	// false at a byte that is not ASCII.
	run := func(i int, in func(byte) bool) (int, bool) {
		for ; i < len(s) && in(s[i]); i++ {
			if s[i] >= utf8.RuneSelf {
				return i, false
			}
		}
		return i, true
	}
	for i := 0; i < len(s); {
		c := s[i]
		next := byte(0)
		if i+1 < len(s) {
			next = s[i+1]
		}
		var ok bool
		switch {
		case c == '#': // a comment, to the end of the line
			return toks, utf8.ValidString(s[i:])
		case isBlank(c):
			i++
		case c == '?' && next == '=':
			var j int
			if j, ok = run(i+2, isListByte); !ok {
				return nil, false
			}
			emit(symIdentOpt, i, j)
			i = j
		case c == '*' && next == '=':
			emit(symUsersEq, i, i+2)
			var j int
			if j, ok = run(i+2, isListByte); !ok {
				return nil, false
			}
			if j > i+2 {
				emit(symItem, i+2, j)
			}
			i = j
		case c == ':':
			emit(symColon, i, i+1)
			j := i + 1
			for j < len(s) && isBlank(s[j]) {
				j++
			}
			if j < len(s) {
				emit(symCmdText, j, len(s))
			}
			return toks, utf8.ValidString(s[j:])
		case c == '[':
			j := i + 1
			for j < len(s) && j-i-1 <= 64 && s[j] != ']' && !isBlank(s[j]) {
				if s[j] >= utf8.RuneSelf {
					return nil, false
				}
				j++
			}
			if j == len(s) || s[j] != ']' || j-i-1 > 64 {
				return nil, false // a stray '[': participle says what it expected
			}
			emit(symBracket, i, j+1)
			i = j + 1
		case c == '@' && next == '=', c == ']', c >= utf8.RuneSelf:
			return nil, false
		default:
			// A word, or a CIDR when a '/' follows its first part.
			j, ok := run(i, func(b byte) bool { return isWordByte(b) && b != '/' })
			if !ok {
				return nil, false
			}
			typ := symWord
			if j > i && j < len(s) && s[j] == '/' {
				typ = symCIDR
			}
			if j, ok = run(j, isWordByte); !ok {
				return nil, false
			}
			emit(typ, i, j)
			i = j
		}
	}
	return toks, true
}

// isBlank: the lexer's space and blank.
func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' }

// isListByte: what ?= and a *= list hold, [^ \t\r\n\v\f#:].
func isListByte(c byte) bool { return !isBlank(c) && c != '\n' && c != '#' && c != ':' }

// isWordByte: what words and CIDRs hold, [^ \t\r\n\v\f#:\[\]].
func isWordByte(c byte) bool { return isListByte(c) && c != '[' && c != ']' }
