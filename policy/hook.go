package policy

import (
	"strconv"
	"strings"
)

// Tokens are the values of the % tokens of shell commands (sockd.conf(5),
// Shell commands).
type Tokens struct {
	ClientName string // %A: client host name (forward-confirmed) or address
	ClientAddr string // %a
	Command    string // %c: connect, bind or udp
	PID        string // %p: server pid
	Service    string // %S: destination service name or port number
	Port       string // %s: destination port
	IdentUser  string // %U: identd user or "unknown"
	User       string // %u: claimed user
	DstName    string // %Z: destination host name or address
	DstAddr    string // %z: destination address
}

// Expand substitutes the % tokens of template. Every substituted value is
// sanitised: a character outside A-Z a-z 0-9 ! @ % - _ = + : , . / becomes
// '_', and so does a leading '-', so that a value can neither start an
// option nor reach the shell as anything but a word. The template itself
// is left as written. %% is a '%'; any other %x, and a '%' at the end,
// expand to nothing.
//
// ok is false when the expansion holds no letter or digit: such a command
// is not run.
func Expand(template string, t *Tokens) (cmd string, ok bool) {
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		i++
		if i == len(template) {
			break
		}
		var v string
		switch template[i] {
		case '%':
			b.WriteByte('%')
			continue
		case 'A':
			v = t.ClientName
		case 'a':
			v = t.ClientAddr
		case 'c':
			v = t.Command
		case 'p':
			v = t.PID
		case 'S':
			v = t.Service
		case 's':
			v = t.Port
		case 'U':
			v = t.IdentUser
		case 'u':
			v = t.User
		case 'Z':
			v = t.DstName
		case 'z':
			v = t.DstAddr
		}
		writeSanitised(&b, v)
	}
	cmd = b.String()
	return cmd, strings.IndexFunc(cmd, isAlnum) >= 0
}

func writeSanitised(b *strings.Builder, v string) {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !isAlnum(rune(c)) && !strings.ContainsRune("!@%-_=+:,./", rune(c)) || i == 0 && c == '-' {
			c = '_'
		}
		b.WriteByte(c)
	}
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// NeedsToken reports whether template uses token x (as in %x), so that a
// caller can skip a lookup that no command asked for.
func NeedsToken(template string, x byte) bool {
	for i := 0; i+1 < len(template); i++ {
		if template[i] == '%' {
			if template[i+1] == x {
				return true
			}
			i++ // skip the token letter ("%%A" is a '%' and an 'A')
		}
	}
	return false
}

// TokensFor fills the % values that follow from a request and its
// decision. ClientName and DstName hold addresses (or the requested name)
// until the caller puts forward-confirmed names there; PID and Service are
// left for the caller.
func TokensFor(q *Query, d *Decision) Tokens {
	t := Tokens{
		ClientAddr: q.Client.String(),
		Command:    q.Command.String(),
		Port:       strconv.Itoa(int(q.Port)),
		Service:    strconv.Itoa(int(q.Port)),
		IdentUser:  "unknown",
		User:       q.User,
		DstName:    q.DstName,
	}
	t.ClientName = t.ClientAddr
	if d.IdentAsked && !d.Ident.Down {
		t.IdentUser = d.Ident.User
	}
	dst := q.Dst
	if len(d.Addrs) > 0 {
		dst = d.Addrs[0]
	}
	if dst.IsValid() {
		t.DstAddr = dst.String()
	}
	if t.DstName == "" {
		t.DstName = t.DstAddr
	}
	return t
}
