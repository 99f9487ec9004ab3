// Command preflight checks that the machine has what a make target needs
// and names what to install, one line per missing prerequisite, before the
// target spends minutes building or linting only to fail on it (a missing
// gcc otherwise shows up as "undefined: kafka.ConfigMap", a missing
// redis-server as one failure per test that needs it).
//
//	preflight cc postgres redis-server psql
//
// checks the named prerequisites and exits 2 if any is missing. The
// Makefile builds it with CGO_ENABLED=0, so that it runs where the C
// compiler it looks for is missing.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/redisserver"
)

func main() {
	problems, err := check(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "preflight:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, "switchyard:", p)
	}
	if len(problems) > 0 {
		os.Exit(2)
	}
}

// checks are the prerequisites preflight knows, by the name its arguments
// use. Each finds the prerequisite the way the code that uses it does.
var checks = map[string]func() error{
	"cc":           checkCC,
	"postgres":     checkPostgres,
	"redis-server": func() error { _, err := redisserver.Find(); return err },
	"psql":         checkPsql,
}

// check runs the checks named in needs and returns one line for each
// prerequisite that is missing.
func check(needs []string) ([]string, error) {
	var problems []string
	for _, need := range needs {
		c, ok := checks[need]
		if !ok {
			return nil, fmt.Errorf("unknown prerequisite %q (known: cc, postgres, redis-server, psql)", need)
		}
		if err := c(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	return problems, nil
}

// checkCC checks for the C compiler that cgo runs: the Kafka client
// (confluent-kafka-go) and go test -race need it. Without one, Go quietly
// turns cgo off, and the build fails later with undefined names.
func checkCC() error {
	out, err := exec.Command("go", "env", "CC", "CGO_ENABLED").Output()
	if err != nil {
		return fmt.Errorf("go env CC CGO_ENABLED: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	cc := "gcc"
	if f := strings.Fields(lines[0]); len(f) > 0 { // CC may carry flags
		cc = f[0]
	}
	if _, err := exec.LookPath(cc); err != nil {
		return fmt.Errorf("%s (Go's C compiler, go env CC) not found: install it (Debian/Ubuntu: apt-get install gcc; macOS: xcode-select --install) or set CC to a C compiler", cc)
	}
	if len(lines) > 1 && lines[1] != "1" {
		return errors.New("cgo is off (CGO_ENABLED=" + lines[1] + "), and the Kafka client and go test -race need it: unset CGO_ENABLED")
	}
	return nil
}

// checkPostgres checks for initdb and postgres where the code looks for
// them, and, when running as root, for the user to run them as.
func checkPostgres() error {
	if _, err := pgcluster.FindBinaries(); err != nil {
		return err
	}
	return pgcluster.CheckServerUser()
}

// checkPsql checks for psql on PATH, where make test's deploy tests run
// it from.
func checkPsql() error {
	if _, err := exec.LookPath("psql"); err == nil {
		return nil
	}
	if dir, err := pgcluster.FindBinaries(); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "psql")); err == nil {
			return fmt.Errorf("psql is in %s but not on PATH, where make test's deploy tests look for it: export PATH=\"%s:$PATH\"", dir, dir)
		}
	}
	return errors.New("psql not found (make test's deploy tests run it): install it (Debian/Ubuntu: apt-get install postgresql-client; macOS: brew install postgresql@15 and put its bin on PATH)")
}
