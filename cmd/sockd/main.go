// Command sockd is a SOCKS4, 4a and 5 server that reads the access rules of
// the legacy CSTC sockd unchanged (sockd.conf(5)). See sockd(8).
//
//	sockd [flags]                   serve
//	sockd check [flags]             load every file, print the rules or every error
//	sockd explain [flags] DEST PORT say what the server would do with one request
//	sockd version                   (also the legacy -ver)
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func versionString() string {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return fmt.Sprintf("sockd %s (%s %s/%s)", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func main() {
	os.Exit(run(filepath.Base(os.Args[0]), os.Args[1:], os.Stdout, os.Stderr))
}

// run runs one invocation and returns its exit status.
func run(name string, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "check":
			return check(name, args[1:], stdout, stderr)
		case "explain":
			return explain(name, args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, versionString())
			return 0
		}
	}
	return serve(name, args, stdout, stderr)
}
