// Command htpasswd prints one "user:bcrypt-hash" line for the password read from stdin, the only
// format Distribution's htpasswd auth accepts. hack/cluster/up.sh writes the authenticated
// registry's credentials with it; it lives in the registry's tool module so the hash comes from the
// same golang.org/x/crypto/bcrypt the registry verifies with, and no Debian package (apache2-utils)
// is needed for one line.
//
//	printf %s "$password" | htpasswd USER >> htpasswd
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "htpasswd:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) != 1 || args[0] == "" || strings.ContainsAny(args[0], ":\n") {
		return fmt.Errorf("usage: htpasswd USER (a name without ':' or newline), password on stdin")
	}
	password, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && err != io.EOF {
		return fmt.Errorf("read the password: %w", err)
	}
	password = strings.TrimSuffix(password, "\n")
	if password == "" {
		return fmt.Errorf("empty password on stdin")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("hash the password: %w", err)
	}
	_, err = fmt.Fprintf(stdout, "%s:%s\n", args[0], hash)
	return err
}
