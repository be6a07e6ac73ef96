package grammar

import (
	"bytes"
	"strconv"
	"strings"
)

// Format prints f as canonical sockd.conf text: one line per rule, in order,
// followed by the special command lines. Parsing the output gives the same
// rules again (positions aside).
func (f *File) Format() []byte {
	var b bytes.Buffer
	for _, r := range f.Rules {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	if f.NoIdentd != nil {
		b.WriteString("#NO_IDENTD: " + f.NoIdentd.Command + "\n")
	}
	if f.BadID != nil {
		b.WriteString("#BAD_ID: " + f.BadID.Command + "\n")
	}
	return b.Bytes()
}

// String returns r as one canonical sockd.conf line.
func (r *Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Action.String())
	if r.Ident != IdentUnset {
		b.WriteString(" ?=" + r.Ident.String())
	}
	writeUsers(&b, r.Users)
	b.WriteString(" " + r.Src.String())
	if r.Dst != nil {
		b.WriteString(" " + r.Dst.String())
	}
	if r.Port != nil {
		b.WriteString(" " + r.Port.String())
	}
	if r.Command != "" {
		b.WriteString(" : " + r.Command)
	}
	return b.String()
}

// String returns h as it is written in a rule.
func (h Host) String() string {
	switch h.Kind {
	case HostAll:
		return "ALL " + h.Mask.String()
	case HostAnyName:
		return "*"
	case HostSuffix:
		return "." + h.Name + " " + h.Mask.String()
	case HostName:
		return h.Name + " " + h.Mask.String()
	}
	if h.Addr.Is4() {
		return h.Addr.String() + " " + h.Mask.String()
	}
	if bits := maskBits(h.Mask); bits >= 0 {
		return "[" + h.Addr.String() + "/" + strconv.Itoa(bits) + "]"
	}
	return "[" + h.Addr.String() + "] [" + h.Mask.String() + "]"
}

// String returns p as it is written in a rule.
func (p *PortTest) String() string {
	return p.Op.String() + " " + p.PortString()
}

// PortString returns the port part of p: a number, lo-hi or a service name.
func (p *PortTest) PortString() string {
	switch {
	case p.Service != "":
		return p.Service
	case p.Lo != p.Hi:
		return strconv.Itoa(int(p.Lo)) + "-" + strconv.Itoa(int(p.Hi))
	}
	return strconv.Itoa(int(p.Lo))
}

// writeUsers prints a *= list, if any.
func writeUsers(b *strings.Builder, users []User) {
	if len(users) == 0 {
		return
	}
	b.WriteString(" *=")
	for i, u := range users {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(u.Name)
	}
}
