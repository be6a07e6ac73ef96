package main

import (
	"flag"
	"fmt"
	"io"
)

// check loads every configured file and prints the compiled rules (exit 0)
// or every error (exit 1), like relayd -n and nginx -t.
func check(name string, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("sockd check", flag.ContinueOnError)
	o.fileFlags(fs, name)
	// The server's own flags are accepted and ignored, so that a unit's
	// ExecStart= flags can be copied to ExecStartPre= and ExecReload=.
	o.serveFlags(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sockd check: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	c, err := load(&o)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if _, err := o.authMethods(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range c.rules.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	for _, fc := range frozenWarnings(&o) {
		fmt.Fprintf(stderr, "warning: %s exists; a legacy server would have read it instead of the text file; sockd never does\n", fc)
	}
	fmt.Fprint(stdout, c.rules)
	fmt.Fprintf(stdout, "# %d rules from %d files, sha256 %s\n", c.rules.Len(), len(c.files), c.sum)
	return 0
}
