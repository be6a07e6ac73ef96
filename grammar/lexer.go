package grammar

import (
	"bytes"
	"io"
	"strings"

	"github.com/alecthomas/participle/v2/lexer"
)

// MaxLine is the longest line, in bytes without its terminator, that the
// legacy formats allow. Legacy sockd silently split longer lines; we refuse
// them.
const MaxLine = 1022

// The lexers below share one shape. "Root" is the beginning of a line: every
// token there pushes "Mid", so tokens that are special only in column 1
// (#NO_IDENTD:, #BAD_ID:) exist only in Root. Lowercase rule names (space,
// comment, blank) are dropped by the lexer itself, which keeps the columns of
// capture errors exact (participle issue #179). Only non-capturing groups are
// used: a capturing group that does not take part in a match panics the
// stateful lexer when the rule has an action (participle issue #324).
//
// Scanning left to right, the first ':' or '#' decides whether the rest of a
// line is a shell command or a comment; '[' ... ']' hides both, for IPv6.
const (
	patSpace   = `[ \t\r\v\f]+`
	patComment = `#.*`
	// An IPv6 address with a prefix length is at most 49 characters; the
	// bound keeps a line of many '[' linear to lex.
	patBracket = `\[[^\] \t\r\n\v\f]{0,64}\]`
	// A word that holds a '/' is an address with a prefix length (or, in
	// srelay.conf, a dotted mask); the parser needs the distinction to know
	// whether a mask token follows.
	patCIDR = `[^ \t\r\n\v\f#:\[\]/]+/[^ \t\r\n\v\f#:\[\]]*`
	patWord = `[^ \t\r\n\v\f#:\[\]]+`
	// Anything else is one stray character, so that a bad line is reported
	// by the parser, with what was expected, instead of by the lexer.
	patBad = `.`
)

// ruleLexer builds the lexer of sockd.conf (socks=false) and socks.conf
// (socks=true). In the Root state every token pushes Mid; sockd.conf adds the
// column-1 special comments there, socks.conf the legacy "sockd@list".
func ruleLexer(socks bool) *lexer.StatefulDefinition {
	tokens := func(act lexer.Action) []lexer.Rule {
		return []lexer.Rule{
			{Name: "comment", Pattern: patComment},
			{Name: "space", Pattern: patSpace, Action: act},
			{Name: "IdentOpt", Pattern: `\?=[^ \t\r\n\v\f#:]*`, Action: act},
			{Name: "UsersEq", Pattern: `\*=`, Action: lexer.Push("List")},
			{Name: "ServersEq", Pattern: `@=`, Action: lexer.Push("Servers")},
			{Name: "Colon", Pattern: `:`, Action: lexer.Push("Cmd")},
			{Name: "Bracket", Pattern: patBracket, Action: act},
			{Name: "CIDR", Pattern: patCIDR, Action: act},
			{Name: "Word", Pattern: patWord, Action: act},
			{Name: "Bad", Pattern: patBad, Action: act},
		}
	}
	var root []lexer.Rule
	if socks {
		// Legacy rsockd spelled the server list "sockd@gw1,gw2".
		root = append(root, lexer.Rule{Name: "SockdAt", Pattern: `(?i:sockd)@`, Action: lexer.Push("Servers")})
	} else {
		root = append(root, lexer.Rule{Name: "Special", Pattern: `#(?:NO_IDENTD|BAD_ID):`, Action: lexer.Push("Cmd")})
	}
	root = append(root, tokens(lexer.Push("Mid"))...)
	return lexer.MustStateful(lexer.Rules{
		"Root": root,
		"Mid":  tokens(nil),
		// A user list is one token; it is split on commas after parsing so
		// that an empty item gets its own exact column.
		"List": {
			{Name: "Item", Pattern: `[^ \t\r\n\v\f#:]+`},
			lexer.Return(),
		},
		// Server lists hold host:port, [v6]:port and URLs, so a ':' inside
		// one does not start the command (an extension: legacy lists held
		// bare host names only).
		"Servers": {
			{Name: "Hops", Pattern: `[^ \t\r\n\v\f#]+`},
			lexer.Return(),
		},
		"Cmd": {
			{Name: "blank", Pattern: `[ \t\r\v\f]+`}, // CR is a blank (sockd.conf(5))
			{Name: "CmdText", Pattern: `.+`},
			lexer.Return(),
		},
	})
}

// physLine is one physical line of a configuration file.
type physLine struct {
	text   string // without the line terminator (LF, or CR LF)
	num    int    // 1-based
	offset int    // byte offset of the line in the file
}

// splitLines reads r and splits it into physical lines. Every line counts,
// blank ones included, so that line numbers match what an editor shows.
func splitLines(r io.Reader) ([]physLine, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	// One string for the file, which the lines share.
	s := string(b)
	lines := make([]physLine, 0, bytes.Count(b, []byte{'\n'})+1)
	off := 0
	for num := 1; off < len(s); num++ {
		end := strings.IndexByte(s[off:], '\n')
		next := off + end + 1
		if end < 0 {
			end = len(s) - off
			next = len(s)
		}
		text := strings.TrimSuffix(s[off:off+end], "\r")
		lines = append(lines, physLine{text: text, num: num, offset: off})
		off = next
	}
	return lines, nil
}

// shiftLexer moves the positions of a one-line lexer to the line's place in
// its file, so that every AST node and every error carries FILE:LINE:COL.
type shiftLexer struct {
	lexer.Lexer
	line, offset int
}

func (l shiftLexer) Next() (lexer.Token, error) {
	t, err := l.Lexer.Next()
	t.Pos.Line += l.line - 1
	t.Pos.Offset += l.offset
	return t, err
}

// lexLine lexes one physical line with def, placing its tokens at the line's
// position in filename.
func lexLine(def *lexer.StatefulDefinition, filename string, pl physLine) (*lexer.PeekingLexer, error) {
	lx, err := def.LexString(filename, pl.text)
	if err != nil {
		return nil, err
	}
	return lexer.Upgrade(shiftLexer{Lexer: lx, line: pl.num, offset: pl.offset})
}
