package deploy

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/pgcluster"
)

// rolesServer is a real PostgreSQL set up like the chart's: the superuser
// reaches it without a password over a Unix socket only, every TCP login
// needs a password (scram-sha-256).
type rolesServer struct {
	cluster *pgcluster.Cluster
	socket  string
}

func startRolesServer(t *testing.T) rolesServer {
	t.Helper()
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatal("psql is needed to run the chart's role script (Debian: apt-get install postgresql-client)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	socket := filepath.Join(dir, "socket")
	if err := os.Mkdir(socket, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		// pgcluster runs the server as "postgres" when we are root.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(socket, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	c, err := pgcluster.Start(ctx, pgcluster.Options{
		DataDir:  filepath.Join(dir, "data"),
		Settings: map[string]string{"unix_socket_directories": socket, "password_encryption": "scram-sha-256"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	s := rolesServer{cluster: c, socket: socket}
	hba := "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(dir, "data", "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := s.superuser(t, "postgres")
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	// The reload is asynchronous: wait until TCP logins need a password.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := s.login("postgres", "postgres", "wrong"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pg_hba.conf not reloaded")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// superuser connects as postgres over the socket (no password).
func (s rolesServer) superuser(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", s.socket, s.cluster.Port(), db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// login connects over TCP as role to db with password, as a service does.
func (s rolesServer) login(role, db, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: fmt.Sprintf("127.0.0.1:%d", s.cluster.Port()), Path: "/" + db, RawQuery: "sslmode=disable"}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// runScript runs the chart's rendered reconcile-roles.sh, as the roles
// container does, with the Secrets as files.
func (s rolesServer) runScript(t *testing.T, script string, passwords map[string]string) error {
	t.Helper()
	dir := t.TempDir()
	for role, pw := range passwords {
		if err := os.MkdirAll(filepath.Join(dir, "secrets", role), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "secrets", role, "password"), []byte(pw), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "reconcile-roles.sh")
	if err := os.WriteFile(path, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", path)
	cmd.Env = append(os.Environ(), "PGHOST="+s.socket, "PGPORT="+strconv.Itoa(s.cluster.Port()), "PGUSER=postgres",
		"SWITCHYARD_SECRETS_DIR="+filepath.Join(dir, "secrets"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

// state is what the script sets: each role's attributes, its database's
// owner and who may connect to it.
func (s rolesServer) state(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	rows, err := s.superuser(t, "postgres").Query(context.Background(), `
		SELECT r.rolname, r.rolcanlogin, r.rolreplication, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls,
		       o.rolname, d.datacl::text
		FROM pg_roles r LEFT JOIN pg_database d ON d.datname = r.rolname LEFT JOIN pg_roles o ON o.oid = d.datdba
		WHERE r.rolname NOT LIKE 'pg\_%' ORDER BY r.rolname`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var login, repl, super, createdb, createrole, bypass bool
		var owner, acl *string
		if err := rows.Scan(&name, &login, &repl, &super, &createdb, &createrole, &bypass, &owner, &acl); err != nil {
			t.Fatal(err)
		}
		deref := func(p *string) string {
			if p == nil {
				return "-"
			}
			return *p
		}
		fmt.Fprintf(&b, "%s login=%v replication=%v super=%v createdb=%v createrole=%v bypassrls=%v owner=%s acl=%s\n",
			name, login, repl, super, createdb, createrole, bypass, deref(owner), deref(acl))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The chart's reconcile-roles.sh, run as rendered against a real
// PostgreSQL: it creates every role and database; after the Secrets change
// (a reinstall onto a kept volume, a rendering without lookup) a re-run
// moves every password, the superuser's too; re-running changes nothing;
// and a role missing from the server (one a later chart version adds) is
// created on the next run.
func TestReconcileRolesScriptAgainstPostgres(t *testing.T) {
	script := mustRender(t, nil).configMaps["switchyard-postgres-roles"].Data["reconcile-roles.sh"]
	if script == "" {
		t.Fatal("no reconcile-roles.sh in ConfigMap switchyard-postgres-roles")
	}
	s := startRolesServer(t)
	passwords := func(gen string) map[string]string {
		m := map[string]string{"admin": "admin-" + gen}
		for _, n := range serviceNames {
			m[n] = n + "-" + gen
		}
		return m
	}
	type step struct {
		name      string
		prepare   func(t *testing.T)
		passwords map[string]string
		stale     map[string]string // passwords that must no longer work
	}
	var before string
	for _, st := range []step{
		{name: "first run creates everything", passwords: passwords("1")},
		{name: "new Secrets move every password", passwords: passwords("2"), stale: passwords("1")},
		{name: "a re-run changes nothing", passwords: passwords("2"), prepare: func(t *testing.T) { before = s.state(t) }},
		{name: "a missing role is created", passwords: passwords("2"), prepare: func(t *testing.T) {
			conn := s.superuser(t, "postgres")
			for _, q := range []string{`DROP DATABASE notifications`, `DROP ROLE notifications`} {
				if _, err := conn.Exec(context.Background(), q); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		if !t.Run(st.name, func(t *testing.T) {
			if st.prepare != nil {
				st.prepare(t)
			}
			if err := s.runScript(t, script, st.passwords); err != nil {
				t.Fatalf("reconcile-roles.sh: %v", err)
			}
			for _, n := range serviceNames {
				if err := s.login(n, n, st.passwords[n]); err != nil {
					t.Errorf("%s cannot log in to its database with its Secret's password: %v", n, err)
				}
				if st.stale != nil {
					if err := s.login(n, n, st.stale[n]); err == nil {
						t.Errorf("%s still logs in with its old password", n)
					}
				}
				other := serviceNames[0]
				if n == other {
					other = serviceNames[1]
				}
				if err := s.login(n, other, st.passwords[n]); err == nil || !strings.Contains(err.Error(), "permission denied") {
					t.Errorf("%s may connect to %s's database, or fails for another reason: %v", n, other, err)
				}
			}
			if err := s.login("postgres", "postgres", st.passwords["admin"]); err != nil {
				t.Errorf("the superuser's password is not its Secret's: %v", err)
			}
			got := s.state(t)
			for _, n := range serviceNames {
				want := n + " login=true replication=true super=false createdb=false createrole=false bypassrls=false owner=" + n + " acl={" + n + "=CTc/" + n + "}"
				if !strings.Contains(got, want+"\n") {
					t.Errorf("role %s: want %q in\n%s", n, want, got)
				}
			}
			if before != "" && got != before {
				t.Errorf("a re-run changed the server:\nbefore\n%s\nafter\n%s", before, got)
			}
		}) {
			return
		}
	}
}
