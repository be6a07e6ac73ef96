// Package wire holds the SOCKS4, SOCKS4a and SOCKS5 (RFC 1928, RFC 1929)
// message codecs shared by the server (package relay) and the client
// dialers (package relay/client): pure functions that parse from and
// append to byte slices, with the RFC diagrams. It knows nothing of policy
// or sockets.
//
// Parse functions take the bytes read so far: they return ErrShort when a
// message is not complete yet, a *ProtoError for a malformed one (carrying
// the reply code to answer with), or the message and the number of bytes
// it used.
package wire
