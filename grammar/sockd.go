package grammar

import (
	"io"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// The syntax of one sockd.conf line, as participle sees it. It is permissive
// on purpose: parts that a rule needs (the source, a mask, a port) are
// optional here and stray tokens are collected, so that check.go can say
// exactly what is missing or extra, at its column, in the words of
// sockd.conf(5). The exported AST (File, Rule, Host, ...) is built from these
// structs by check.go.

type sockdLine struct {
	Special *specialSyntax `parser:"(  @@"`
	Rule    *ruleSyntax    `parser:" | @@"`
	Stray   *cmdSyntax     `parser:" | @@"`
	Junk    []*anySyntax   `parser:" | @@+ )?"`
}

type specialSyntax struct {
	Pos  lexer.Position
	Kind string `parser:"@Special"`
	Cmd  string `parser:"@CmdText?"`
}

type ruleSyntax struct {
	Pos    lexer.Position
	Action string       `parser:"@Word"`
	Ident  *identSyntax `parser:"@@?"`
	Users  *listSyntax  `parser:"@@?"`
	Src    *hostSyntax  `parser:"@@?"`
	Dst    *hostSyntax  `parser:"@@?"`
	Port   *portSyntax  `parser:"@@?"`
	Extra  []*anySyntax `parser:"@@*"`
	Cmd    *cmdSyntax   `parser:"@@?"`
}

type identSyntax struct {
	Pos  lexer.Position
	Text string `parser:"@IdentOpt"`
}

type listSyntax struct {
	Pos  lexer.Position
	Text string `parser:"UsersEq @Item?"`
}

// hostSyntax is "addr mask", "addr/len", "[v6]" or "[v6/len]". IPv6 takes
// no mask token: "[a] [b]" is a source and a destination.
// A port operator cannot start a host or be its mask: that is how an absent
// destination is told from a present one.
type hostSyntax struct {
	Pos    lexer.Position
	Tokens []lexer.Token
	CIDR   string `parser:"(  @CIDR"`
	V6     string `parser:" | @Bracket"`
	Word   string `parser:" | (?! 'eq' | 'neq' | 'lt' | 'gt' | 'le' | 'ge') @Word"`
	Mask   string `parser:"   ( (?! 'eq' | 'neq' | 'lt' | 'gt' | 'le' | 'ge') @Word )? )"`
}

type portSyntax struct {
	Pos    lexer.Position
	Tokens []lexer.Token
	Op     string `parser:"@('eq' | 'neq' | 'lt' | 'gt' | 'le' | 'ge')"`
	Port   string `parser:"@Word?"`
}

type cmdSyntax struct {
	Pos  lexer.Position
	Text string `parser:"Colon @CmdText?"`
}

// anySyntax is one token that has no place where it stands.
type anySyntax struct {
	Pos  lexer.Position
	Text string `parser:"@(IdentOpt | UsersEq | ServersEq | Item | Hops | Bracket | CIDR | Word | Bad)"`
}

var (
	sockdLexer  = ruleLexer(false)
	sockdParser = participle.MustBuild[sockdLine](
		participle.Lexer(sockdLexer),
		participle.CaseInsensitive("Word"),
		participle.UseLookahead(2),
	)
)

// SockdEBNF returns the grammar of one sockd.conf line in EBNF, as
// participle prints it.
func SockdEBNF() string { return sockdParser.String() }

// ParseSockd parses a sockd.conf. It returns every error of the file, as an
// ErrorList sorted by position; on error the returned *File is nil. Warnings
// (things that are legal but probably not meant) are in File.Warnings.
//
// ParseSockd only checks what the text says: it does not resolve names or
// service names, nor read the user files a rule names.
func ParseSockd(filename string, r io.Reader) (*File, error) {
	lines, err := splitLines(r)
	if err != nil {
		return nil, err
	}
	f := &File{Filename: filename}
	var errs ErrorList
	var toks []lexer.Token
	for _, pl := range lines {
		if tooLong(filename, pl, &errs) || blank(pl.text) {
			continue
		}
		syn, ok := fastSockdLine(filename, pl, &toks)
		if !ok {
			var err *Error
			if syn, err = parseLine(sockdParser, sockdLexer, filename, pl); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		f.addSockdLine(syn, &errs)
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// blank reports whether a line is empty or only a comment, so that the
// parser need not see it. A column-1 #NO_IDENTD: or #BAD_ID: is not a
// comment.
func blank(line string) bool {
	t := strings.TrimLeft(line, " \t\r\v\f")
	if t == "" {
		return true
	}
	if t[0] != '#' {
		return false
	}
	return len(t) < len(line) || !strings.HasPrefix(t, "#NO_IDENTD:") && !strings.HasPrefix(t, "#BAD_ID:")
}

// parseLine runs parser over one physical line.
func parseLine[G any](p *participle.Parser[G], def *lexer.StatefulDefinition, filename string, pl physLine) (*G, *Error) {
	lx, err := lexLine(def, filename, pl)
	if err == nil {
		var g *G
		if g, err = p.ParseFromLexer(lx); err == nil {
			return g, nil
		}
	}
	return nil, syntaxError(err)
}
