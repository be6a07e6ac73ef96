package ident

import (
	"errors"
	"strings"
	"testing"
)

// FuzzIdentReply checks that ParseReply never panics, that every error is an
// identd ERROR or ErrMalformed, and that an accepted reply came from a line of
// at most 1000 bytes and has a non-empty user id without CR or LF.
func FuzzIdentReply(f *testing.F) {
	// A plain USERID reply, as in RFC 1413 section 7.
	f.Add([]byte("6193, 23 : USERID : UNIX : stjohns\r\n"), uint16(6193), uint16(23))
	// oidentd's reply, without blanks.
	f.Add([]byte("6193,23:USERID:UNIX:root\r\n"), uint16(6193), uint16(23))
	// An ERROR reply.
	f.Add([]byte("6193, 23 : ERROR : NO-USER\r\n"), uint16(6193), uint16(23))
	// A user id that contains colons.
	f.Add([]byte("6193, 23 : USERID : UNIX : a:b:c\r\n"), uint16(6193), uint16(23))
	// An OS with a charset.
	f.Add([]byte("6193, 23 : USERID : UNIX,UTF-8 : bob\r\n"), uint16(6193), uint16(23))
	// Empty.
	f.Add([]byte(""), uint16(6193), uint16(23))
	// Oversized: more than 1000 bytes.
	f.Add([]byte("6193, 23 : USERID : UNIX : "+strings.Repeat("x", 1000)), uint16(6193), uint16(23))
	// Ports that are not the ones asked.
	f.Add([]byte("23, 6193 : USERID : UNIX : bob\r\n"), uint16(6193), uint16(23))
	// Blanks and tabs everywhere, user id with inner blanks.
	f.Add([]byte(" \t6193 , 23 :\tUSERID : UNIX :  a b  \r\n"), uint16(6193), uint16(23))
	// CRLF in the middle and bare CR at the end.
	f.Add([]byte("6193, 23 : USERID : UNIX : bob\r\nx\r"), uint16(6193), uint16(23))

	f.Fuzz(func(t *testing.T, line []byte, remotePort, localPort uint16) {
		r, err := ParseReply(line, remotePort, localPort)
		if err != nil {
			var re *ReplyError
			if errors.As(err, &re) {
				if re.Code == "" {
					t.Errorf("ParseReply(%q): ERROR with an empty code", line)
				}
			} else if !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseReply(%q): error %v is neither *ReplyError nor ErrMalformed", line, err)
			}
			return
		}
		if r.User == "" || strings.ContainsAny(r.User, "\r\n") || len(line) > 1000 {
			t.Errorf("ParseReply(%q) accepted %+v", line, r)
		}
	})
}
