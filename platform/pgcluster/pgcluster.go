// Package pgcluster runs a local PostgreSQL server from the installed server
// binaries: the throw-away clusters of the test kit and the persistent one of
// `make run` are both started here.
//
// PostgreSQL refuses to run as root, so when the current user is root the
// cluster's files are owned by, and the server runs as, the "postgres" user.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrBinariesNotFound is returned when initdb and postgres cannot be found.
var ErrBinariesNotFound = errors.New("PostgreSQL server binaries (initdb, postgres) not found: " +
	"install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@15) " +
	"or set SWITCHYARD_PG_BIN to the directory that holds them")

// Options configure a cluster.
type Options struct {
	// DataDir holds the cluster; it is initialised when missing or empty.
	DataDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Durable keeps fsync on. Test clusters turn it off for speed.
	Durable bool
	// Settings are extra "-c name=value" server settings.
	Settings map[string]string
}

// Cluster is a running PostgreSQL server.
type Cluster struct {
	opts Options
	bin  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, valid after done is closed
}

// FindBinaries returns the directory that holds initdb and postgres:
// $SWITCHYARD_PG_BIN, then $PATH, then the usual package locations.
func FindBinaries() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("SWITCHYARD_PG_BIN"); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("SWITCHYARD_PG_BIN=%s: %w", dir, ErrBinariesNotFound)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// Distributions often link initdb into /usr/bin or /usr/local/bin;
		// the real directory also holds postgres, pgbench and friends.
		if real, err := filepath.EvalSymlinks(p); err == nil && has(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if has(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	var candidates []string
	for _, pattern := range []string{
		"/usr/lib/postgresql/*/bin", // Debian, Ubuntu
		"/usr/pgsql-*/bin",          // RHEL, Fedora (PGDG)
		"/opt/homebrew/opt/postgresql@*/bin",
		"/usr/local/opt/postgresql@*/bin",
		"/usr/local/pgsql/bin",
	} {
		m, _ := filepath.Glob(pattern)
		candidates = append(candidates, m...)
	}
	// Prefer the newest major version.
	sort.Slice(candidates, func(i, j int) bool { return versionOf(candidates[i]) > versionOf(candidates[j]) })
	for _, dir := range candidates {
		if has(dir) {
			return dir, nil
		}
	}
	return "", ErrBinariesNotFound
}

func versionOf(dir string) int {
	for _, part := range strings.FieldsFunc(dir, func(r rune) bool { return r < '0' || r > '9' }) {
		if n, err := strconv.Atoi(part); err == nil {
			return n
		}
	}
	return 0
}

// Start initialises opts.DataDir if needed and starts the server, returning
// once it accepts connections.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := FindBinaries()
	if err != nil {
		return nil, err
	}
	if opts.DataDir == "" {
		return nil, errors.New("pgcluster: DataDir is required")
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, err
	}
	opts.DataDir = dataDir
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	// A busy port is reported before initdb, which takes seconds.
	if opts.Port != 0 {
		if err := CheckPortFree(opts.Port); err != nil {
			return nil, fmt.Errorf("%w (another PostgreSQL or a previous run?)", err)
		}
	}
	if err := initdb(ctx, bin, opts, cred); err != nil {
		return nil, err
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	c := &Cluster{opts: opts, bin: bin, done: make(chan struct{})}
	if err := c.start(ctx, cred); err != nil {
		return nil, err
	}
	return c, nil
}

// CheckServerUser reports an error when PostgreSQL cannot run as the
// current user: it refuses root, so root needs a "postgres" user to run it
// as (Debian's postgresql package creates one).
func CheckServerUser() error {
	_, err := serverCredential()
	return err
}

// serverCredential returns the credential to run PostgreSQL with: nil for a
// normal user, the "postgres" user when running as root.
func serverCredential() (*syscall.Credential, error) {
	if os.Getuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses root: need a %q user to run it as: %w", "postgres", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// chownForServer hands dir (and, for root, every parent up to a directory the
// server can already traverse) to the server user.
func chownForServer(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(cred.Uid), int(cred.Gid))
	}); err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	// Parents created 0700 by root (os.MkdirTemp) must be traversable.
	for p := filepath.Dir(dir); p != "/" && p != "."; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, st.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("make %s traversable for postgres: %w", p, err)
			}
		}
	}
	return nil
}

// initdb initialises opts.DataDir unless it already holds a cluster.
//
// initdb works in a directory of its own beside DataDir, which is renamed to
// DataDir only once initdb has succeeded. initdb writes PG_VERSION first and
// has no time to clean up when killed (Ctrl-C during the first `make run`),
// so initialising in place would leave a directory that looks like a cluster
// and that every later run would try, and fail, to start. Debris in the
// working directory belongs to nobody: the next run removes it.
func initdb(ctx context.Context, bin string, opts Options, cred *syscall.Credential) error {
	initialised, err := hasCluster(opts.DataDir)
	if err != nil {
		return err
	}
	if initialised {
		return chownForServer(opts.DataDir, cred)
	}
	work := opts.DataDir + ".initdb"
	if err := os.RemoveAll(work); err != nil {
		return fmt.Errorf("remove what an interrupted initdb left: %w", err)
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	if err := chownForServer(work, cred); err != nil {
		_ = os.RemoveAll(work)
		return err
	}
	args := []string{"-D", work, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"}
	if !opts.Durable {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), args...)
	// An initdb that outlived us would still be writing when the next run
	// removes its directory.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(work)
		return fmt.Errorf("initdb %s: %w\n%s", opts.DataDir, err, out)
	}
	if err := os.Rename(work, opts.DataDir); err != nil {
		return fmt.Errorf("move the new cluster into place: %w", err)
	}
	return nil
}

// hasCluster reports whether dir holds an initialised cluster. A missing or
// empty dir holds none (an empty one is removed, so that the new cluster can
// take its name). Anything else without PG_VERSION and global/pg_control
// cannot be started and is not ours to delete: an interrupted initdb of a
// Switchyard that initialised in place, or not a cluster at all. That is an
// error saying what to delete.
func hasCluster(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the data directory: %w", err)
	}
	if len(entries) == 0 {
		return false, os.Remove(dir)
	}
	for _, f := range []string{"PG_VERSION", filepath.Join("global", "pg_control")} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false, fmt.Errorf("%s is not a complete PostgreSQL cluster (no %s: an interrupted initdb?): delete it (rm -rf %s) and start again", dir, f, dir)
		}
	}
	return true, nil
}

func (c *Cluster) start(ctx context.Context, cred *syscall.Credential) error {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": "",
		"wal_level":               "logical",
		"max_wal_senders":         "64",
		"max_replication_slots":   "64",
		"max_connections":         "300",
		"shared_buffers":          "128MB",
		// A dead relay's slot is released within seconds, so a standby
		// relay can take over quickly.
		"wal_sender_timeout": "10s",
	}
	if !c.opts.Durable {
		// Throw-away clusters skip fsync. synchronous_commit stays on:
		// walsenders only stream flushed WAL, so turning it off would add
		// up to wal_writer_delay to every event's relay latency.
		settings["fsync"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range c.opts.Settings {
		settings[k] = v
	}
	args := []string{"-D", c.opts.DataDir, "-p", strconv.Itoa(c.opts.Port)}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	logPath := filepath.Join(c.opts.DataDir, "server.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c.cmd = exec.Command(filepath.Join(c.bin, "postgres"), args...)
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	c.cmd.Dir = c.opts.DataDir
	// SIGQUIT (immediate shutdown) if we die, so no server outlives its owner.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	go func() {
		c.err = c.cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name
			// initdb creates the postgres database last: waiting would not
			// bring it.
			c.Stop()
			return fmt.Errorf("the cluster in %s has no \"postgres\" database (an interrupted initdb?): delete the directory (rm -rf %s) and start again", c.opts.DataDir, c.opts.DataDir)
		}
		select {
		case <-c.done:
			return fmt.Errorf("postgres exited during start-up (%w); see %s:\n%s", c.err, logPath, tail(logPath, 20))
		case <-ctx.Done():
			c.Stop()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Stop()
			return fmt.Errorf("postgres did not accept connections within 60s; see %s", logPath)
		}
	}
}

// Port returns the server's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.opts.Port }

// URL returns a connection URL for database db as the superuser.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.opts.Port, db)
}

// CreateDatabase creates database name unless it exists.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: clients disconnected, data
// flushed; immediate after 30 s) and waits for it to exit. A stopped
// cluster's Stop does nothing.
func (c *Cluster) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Signal(syscall.SIGQUIT)
		<-c.done
	}
}

// RestartImmediate stops the server the way a crash does (immediate
// shutdown: no checkpoint, every session cut; the next start replays the
// WAL) and starts it again on the same port, returning once it accepts
// connections. It must not run concurrently with Stop.
func (c *Cluster) RestartImmediate(ctx context.Context) error {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGQUIT)
		<-c.done
	}
	cred, err := serverCredential()
	if err != nil {
		return err
	}
	c.done = make(chan struct{})
	// The port was just released; postgres retries binding for a while.
	return c.start(ctx, cred)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !reservedPort(port) {
			return port, nil
		}
	}
}

// reservedPort reports whether port is one `make run` uses (the services'
// gRPC and metrics ports, PostgreSQL, the broker, Redis): a random port for
// a test must not take one, or a test that runs the shop on those ports
// (and a developer's `make run`) would find it busy.
func reservedPort(port int) bool {
	return (port >= 50050 && port <= 50070) || (port >= 51050 && port <= 51070) ||
		port == 55432 || port == 19092 || port == 16379
}

// CheckPortFree reports an error if port on 127.0.0.1 cannot be bound.
func CheckPortFree(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d is busy", port)
	}
	return l.Close()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
