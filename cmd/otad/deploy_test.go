package main

// The container image and deploy/docker-compose.yml are checked here
// without a Docker engine: the compose file is loaded, interpolated and
// validated the way `docker compose` does (compose-go), the Dockerfile is
// read instruction by instruction, and both are held against go.mod and
// the settings otad knows (Config.vars).

import (
	"context"
	"debug/elf"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
)

const (
	composeFile = "../../deploy/docker-compose.yml"
	envExample  = "../../deploy/.env.example"
	dockerfile  = "../../Dockerfile"
)

// knownVars is every OTAD_* name otad reads: each setting, and NAME_FILE
// for the secrets.
func knownVars() map[string]bool {
	known := map[string]bool{}
	var c Config
	for _, v := range c.vars() {
		known[v.Env] = true
		if v.Secret {
			known[v.Env+"_FILE"] = true
		}
	}
	return known
}

// loadCompose loads deploy/docker-compose.yml as `docker compose` would
// after `cp deploy/.env.example deploy/.env`, with nothing from this
// process's environment.
func loadCompose(t *testing.T, envFiles ...string) (*types.Project, error) {
	t.Helper()
	return loadComposeFile(t, composeFile, envFiles...)
}

// loadComposeFile loads file as if it were deploy/docker-compose.yml.
func loadComposeFile(t *testing.T, file string, envFiles ...string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithWorkingDirectory(filepath.Dir(composeFile)),
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, envExample)
	if err != nil {
		t.Fatalf("docker compose would refuse deploy/docker-compose.yml: %v", err)
	}
	return p
}

// serviceEnv is a service's environment after interpolation.
func serviceEnv(t *testing.T, p *types.Project, name string) map[string]string {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("compose has no %s service", name)
	}
	env := map[string]string{}
	for k, v := range s.Environment {
		if v == nil {
			t.Fatalf("service %s: %s is passed through from the host, not set", name, k)
		}
		env[k] = *v
	}
	return env
}

// listenPorts maps each address setting of otad's environment that makes
// it listen (OTAD_*_ADDR, falling back to its default) to its TCP port.
func listenPorts(t *testing.T, env map[string]string) map[string]uint32 {
	t.Helper()
	ports := map[string]uint32{}
	var c Config
	for _, v := range c.vars() {
		if !strings.HasSuffix(v.Env, "_ADDR") {
			continue
		}
		addr := env[v.Env]
		if addr == "" { // as parseConfig reads it
			addr = v.Default
		}
		if addr == "" {
			continue
		}
		_, port, err := net.SplitHostPort(addr)
		n, err2 := strconv.ParseUint(port, 10, 16)
		if err != nil || err2 != nil {
			t.Fatalf("%s=%q is not host:port", v.Env, addr)
		}
		ports[v.Env] = uint32(n)
	}
	return ports
}

// downloadPort is the container port devices download firmware from: the
// download listener's when otad has one configured, else the console
// listener's, which serves downloads too.
func downloadPort(t *testing.T, env map[string]string) uint32 {
	ports := listenPorts(t, env)
	if p, ok := ports["OTAD_DOWNLOAD_ADDR"]; ok {
		return p
	}
	return ports["OTAD_HTTP_ADDR"]
}

func TestComposeServices(t *testing.T) {
	p := mustLoadCompose(t)
	for _, name := range []string{"postgres", "s3", "s3-bucket", "otad"} {
		if _, ok := p.Services[name]; !ok {
			t.Fatalf("compose has no %s service", name)
		}
	}

	// Every long-running service says when it is healthy; the bucket
	// creation runs once.
	for name, s := range p.Services {
		if name == "s3-bucket" {
			if s.Restart != "" && s.Restart != "no" {
				t.Errorf("s3-bucket restarts (%q): a one-shot must not", s.Restart)
			}
			continue
		}
		if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) < 2 {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
	if hc := p.Services["otad"].HealthCheck; hc != nil && !slices.Contains(hc.Test, "/usr/local/bin/otad-healthcheck") {
		t.Errorf("otad's healthcheck %v does not run otad-healthcheck", hc.Test)
	}

	wantDeps := map[string]map[string]string{
		"s3-bucket": {"s3": types.ServiceConditionHealthy},
		"otad": {
			"postgres":  types.ServiceConditionHealthy,
			"s3":        types.ServiceConditionHealthy,
			"s3-bucket": types.ServiceConditionCompletedSuccessfully,
		},
	}
	for svc, deps := range wantDeps {
		for dep, cond := range deps {
			if got := p.Services[svc].DependsOn[dep].Condition; got != cond {
				t.Errorf("%s depends on %s with condition %q, want %q", svc, dep, got, cond)
			}
		}
	}

	// State lives in named volumes, never in the containers.
	wantData := map[string]string{"postgres": "/var/lib/postgresql/data", "s3": "/data", "otad": "/data"}
	for svc, target := range wantData {
		found := false
		for _, v := range p.Services[svc].Volumes {
			if v.Target != target {
				continue
			}
			found = true
			if v.Type != types.VolumeTypeVolume {
				t.Errorf("%s keeps %s in a %s mount, want a named volume", svc, target, v.Type)
			} else if _, ok := p.Volumes[v.Source]; !ok {
				t.Errorf("%s mounts volume %q, which is not declared", svc, v.Source)
			}
		}
		if !found {
			t.Errorf("%s has no volume at %s", svc, target)
		}
	}

	// otad is built from this repository's Dockerfile.
	otad := p.Services["otad"]
	root, _ := filepath.Abs("../..")
	if otad.Build == nil || otad.Build.Context != root || otad.Build.Dockerfile != "Dockerfile" {
		t.Errorf("otad build = %+v, want context %s and the Dockerfile", otad.Build, root)
	}
	if otad.Build != nil && otad.Build.Args["VERSION"] == nil {
		t.Error("otad's build does not pass VERSION to the Dockerfile")
	}
}

func TestComposePorts(t *testing.T) {
	p := mustLoadCompose(t)
	env := serviceEnv(t, p, "otad")
	listens := map[uint32]bool{}
	for _, port := range listenPorts(t, env) {
		listens[port] = true
	}
	published := map[string]uint32{} // host port → container port
	for _, pc := range p.Services["otad"].Ports {
		if pc.Protocol != "" && pc.Protocol != "tcp" {
			continue
		}
		if !listens[pc.Target] {
			t.Errorf("host port %s goes to container port %d, where otad does not listen (it listens on %v)", pc.Published, pc.Target, listens)
		}
		published[pc.Published] = pc.Target
	}
	want := map[string]uint32{
		"1883": listenPorts(t, env)["OTAD_MQTT_ADDR"],
		"8080": listenPorts(t, env)["OTAD_HTTP_ADDR"],
		// The C device SDK ignores URL ports: downloads must be on 80.
		"80": downloadPort(t, env),
	}
	for host, target := range want {
		if got, ok := published[host]; !ok {
			t.Errorf("host port %s is not published, want it on container port %d (published: %v)", host, target, published)
		} else if got != target {
			t.Errorf("host port %s publishes container port %d, want %d", host, got, target)
		}
	}
	for name, s := range p.Services {
		if name != "otad" && len(s.Ports) > 0 {
			t.Errorf("%s publishes ports to the host; only otad needs to", name)
		}
	}

	// The URLs devices get must work with an SDK that connects to port 80.
	u, err := url.Parse(env["OTAD_PUBLIC_URL"])
	if err != nil || u.Scheme != "http" || (u.Port() != "" && u.Port() != "80") {
		t.Errorf("OTAD_PUBLIC_URL=%q: want plain http on port 80", env["OTAD_PUBLIC_URL"])
	}
}

// TestComposeTLS follows the compose file's comments for MQTT over TLS:
// with those lines uncommented, otad accepts the settings, listens on 8883,
// which is published, and finds the certificate and key in a mounted
// directory.
func TestComposeTLS(t *testing.T) {
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	commented := regexp.MustCompile(`(?m)^(\s*)# ((?:OTAD_MQTT_TLS_[A-Z_]+:|- "8883|- \./tls).*)$`)
	if n := len(commented.FindAll(raw, -1)); n != 5 {
		t.Fatalf("found %d commented-out TLS lines in the compose file, want 5 (3 settings, the port, the volume)", n)
	}
	file := filepath.Join(t.TempDir(), "docker-compose.yml")
	if err := os.WriteFile(file, commented.ReplaceAll(raw, []byte("$1$2")), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := loadComposeFile(t, file, envExample)
	if err != nil {
		t.Fatalf("with TLS uncommented, docker compose would refuse the file: %v", err)
	}
	env := serviceEnv(t, p, "otad")
	cfg, err := parseConfig("otad", nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("with TLS uncommented, otad refuses the environment: %v", err)
	}
	tlsPort := listenPorts(t, env)["OTAD_MQTT_TLS_ADDR"]
	if tlsPort != 8883 || !slices.ContainsFunc(p.Services["otad"].Ports, func(pc types.ServicePortConfig) bool {
		return pc.Published == "8883" && pc.Target == tlsPort
	}) {
		t.Errorf("MQTT over TLS listens on %d, and host port 8883 does not reach it", tlsPort)
	}
	for _, f := range []string{cfg.MQTTTLSCert, cfg.MQTTTLSKey} {
		if !slices.ContainsFunc(p.Services["otad"].Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.ReadOnly && strings.HasPrefix(f, v.Target+"/")
		}) {
			t.Errorf("%s is not in a read-only mount of the otad service", f)
		}
	}
}

// TestComposeEnvironment checks that the settings compose gives otad are
// ones otad knows and accepts, and that they agree with the other services.
func TestComposeEnvironment(t *testing.T) {
	p := mustLoadCompose(t)
	known := knownVars()

	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`OTAD_[A-Z0-9_]+`).FindAllString(string(raw), -1) {
		if !known[name] {
			t.Errorf("deploy/docker-compose.yml uses %s, which otad does not read", name)
		}
	}
	for svc := range p.Services {
		for k := range serviceEnv(t, p, svc) {
			if strings.HasPrefix(k, "OTAD_") && !known[k] {
				t.Errorf("service %s sets %s, which otad does not read", svc, k)
			}
		}
	}

	env := serviceEnv(t, p, "otad")
	cfg, err := parseConfig("otad", nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("otad refuses the compose environment: %v", err)
	}
	if g := p.Services["otad"].StopGracePeriod; g == nil || time.Duration(*g) <= cfg.ShutdownTimeout {
		t.Errorf("otad's stop_grace_period %v does not outlast OTAD_SHUTDOWN_TIMEOUT %v: Docker would kill it mid-shutdown", g, cfg.ShutdownTimeout)
	}
	if cfg.DataDir != "/data" {
		t.Errorf("OTAD_DATA_DIR = %q, want the image's volume /data", cfg.DataDir)
	}

	// The database URL names the postgres service and its credentials.
	pg := serviceEnv(t, p, "postgres")
	db, err := url.Parse(cfg.DatabaseURL)
	if err != nil {
		t.Fatalf("OTAD_DATABASE_URL: %v", err)
	}
	pass, _ := db.User.Password()
	if db.Hostname() != "postgres" || db.User.Username() != pg["POSTGRES_USER"] ||
		pass != pg["POSTGRES_PASSWORD"] || db.Path != "/"+pg["POSTGRES_DB"] {
		t.Errorf("OTAD_DATABASE_URL %s does not match the postgres service (user %s, db %s)",
			db.Redacted(), pg["POSTGRES_USER"], pg["POSTGRES_DB"])
	}

	// The firmware bucket is on the s3 service, reachable with its root
	// credentials, and is the bucket s3-bucket creates.
	s3 := serviceEnv(t, p, "s3")
	ep, err := url.Parse(cfg.S3Endpoint)
	if err != nil || ep.Hostname() != "s3" {
		t.Errorf("OTAD_S3_ENDPOINT %q does not name the s3 service", cfg.S3Endpoint)
	} else if cmd := p.Services["s3"].Command; !slices.Contains(cmd, ":"+ep.Port()) {
		t.Errorf("OTAD_S3_ENDPOINT port %s is not the one s3 listens on (%v)", ep.Port(), cmd)
	}
	if cfg.S3Bucket == "" || !cfg.S3PathStyle {
		t.Errorf("compose must set OTAD_S3_BUCKET and OTAD_S3_PATH_STYLE=true (bucket %q, path style %v)", cfg.S3Bucket, cfg.S3PathStyle)
	}
	if env["AWS_ACCESS_KEY_ID"] == "" || env["AWS_ACCESS_KEY_ID"] != s3["ROOT_ACCESS_KEY"] ||
		env["AWS_SECRET_ACCESS_KEY"] != s3["ROOT_SECRET_KEY"] || env["AWS_REGION"] != s3["VGW_REGION"] {
		t.Error("otad's AWS_* credentials and region are not the s3 service's")
	}
	mk := serviceEnv(t, p, "s3-bucket")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} {
		if mk[k] != env[k] {
			t.Errorf("s3-bucket's %s differs from otad's", k)
		}
	}
	if mk["AWS_ENDPOINT_URL"] != cfg.S3Endpoint {
		t.Errorf("s3-bucket talks to %q, otad to %q", mk["AWS_ENDPOINT_URL"], cfg.S3Endpoint)
	}
	if script := strings.Join(p.Services["s3-bucket"].Command, " "); !strings.Contains(script, "create-bucket --bucket "+cfg.S3Bucket) {
		t.Errorf("s3-bucket does not create %s: %s", cfg.S3Bucket, script)
	}
}

// TestComposeEnvExample checks deploy/.env.example: every OTAD_* name in it
// is a setting otad knows, and compose refuses to start without the
// secrets it holds, naming the file to copy.
func TestComposeEnvExample(t *testing.T) {
	f, err := os.Open(envExample)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars, err := dotenv.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	known := knownVars()
	for k := range vars {
		if strings.HasPrefix(k, "OTAD_") && !known[k] {
			t.Errorf(".env.example sets %s, which otad does not read", k)
		}
	}

	// Every variable compose needs is in the example, and everything in
	// the example is used: a misspelt name would be silently ignored.
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(:?[-?][^}]*)?\}`).FindAllStringSubmatch(string(raw), -1) {
		_, set := vars[m[1]]
		if !set && !used[m[1]] && !strings.HasPrefix(m[2], ":-") && !strings.HasPrefix(m[2], "-") {
			t.Errorf("compose needs ${%s}, which .env.example does not set", m[1])
		}
		used[m[1]] = true
	}
	for k := range vars {
		if !used[k] {
			t.Errorf(".env.example sets %s, which compose does not use", k)
		}
	}

	if _, err := loadCompose(t); err == nil || !strings.Contains(err.Error(), "deploy/.env") {
		t.Errorf("without deploy/.env compose loads (err %v); it should ask for the file", err)
	}
}

// dockerInstr is one Dockerfile instruction, continuation lines joined.
type dockerInstr struct {
	cmd  string // upper case: FROM, RUN, …
	args string
}

// parseDockerfile splits a Dockerfile into stages of instructions; each
// stage starts with its FROM.
func parseDockerfile(t *testing.T, text string) [][]dockerInstr {
	t.Helper()
	var stages [][]dockerInstr
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := dockerInstr{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "RUN" { // drop options such as --mount=type=cache,…
			for strings.HasPrefix(in.args, "--") {
				_, in.args, _ = strings.Cut(in.args, " ")
				in.args = strings.TrimSpace(in.args)
			}
		}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		} else if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile: %s before the first FROM", in.cmd)
			}
			return
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if body, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

func instrs(stage []dockerInstr, cmd string) []string {
	var out []string
	for _, in := range stage {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// goBuildStep finds the `go build` in stage that builds pkg and returns it
// as one shell command.
func goBuildStep(t *testing.T, stage []dockerInstr, pkg string) string {
	t.Helper()
	for _, run := range instrs(stage, "RUN") {
		for _, step := range strings.Split(run, "&&") {
			step = strings.TrimSpace(step)
			if strings.Contains(step, "go build") && strings.HasSuffix(step, " "+pkg) {
				return step
			}
		}
	}
	t.Fatalf("the Dockerfile's build stage never builds %s", pkg)
	return ""
}

func readDockerfile(t *testing.T) [][]dockerInstr {
	t.Helper()
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(t, string(b))
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a small final one", len(stages))
	}
	return stages
}

// goModVersion is go.mod's go line, e.g. 1.26.0.
func goModVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

func TestDockerfile(t *testing.T) {
	stages := readDockerfile(t)
	build, final := stages[0], stages[len(stages)-1]

	// The builder is the Go of go.mod: golang:1.26 for go 1.26.0, or that
	// exact release when the tag names one.
	from := strings.Fields(instrs(build, "FROM")[0])[0]
	m := regexp.MustCompile(`^golang:(\d+\.\d+(?:\.\d+)?)(-[a-z0-9.]+)?$`).FindStringSubmatch(from)
	if m == nil {
		t.Fatalf("build stage is FROM %s, want a golang:<version> image", from)
	}
	mod := goModVersion(t)
	if tag := m[1]; tag != mod && tag+".0" != mod && !strings.HasPrefix(mod, tag+".") {
		t.Errorf("Dockerfile builds with Go %s, go.mod says go %s", tag, mod)
	}

	step := goBuildStep(t, build, "./cmd/otad")
	for _, want := range []string{"CGO_ENABLED=0 ", "-trimpath", "-X main.version=${VERSION}"} {
		if !strings.Contains(step, want) {
			t.Errorf("the otad build step lacks %q: %s", want, step)
		}
	}
	if !slices.ContainsFunc(instrs(build, "ARG"), func(a string) bool { return strings.HasPrefix(a, "VERSION") }) {
		t.Error("the build stage has no ARG VERSION")
	}
	if hc := goBuildStep(t, build, "./cmd/otad-healthcheck"); !strings.Contains(hc, "CGO_ENABLED=0 ") {
		t.Errorf("otad-healthcheck is not built static: %s", hc)
	}

	if base := strings.Fields(instrs(final, "FROM")[0])[0]; strings.HasPrefix(base, "golang:") {
		t.Errorf("the final stage is %s; it should be a small runtime image", base)
	}
	users := instrs(final, "USER")
	if len(users) == 0 {
		t.Fatal("the final stage runs as root: no USER")
	}
	if u, _, _ := strings.Cut(users[len(users)-1], ":"); u == "root" || u == "0" {
		t.Errorf("the final stage runs as %s", users[len(users)-1])
	}
	hcs := instrs(final, "HEALTHCHECK")
	if len(hcs) != 1 || !strings.Contains(hcs[0], "CMD") || !strings.Contains(hcs[0], "otad-healthcheck") {
		t.Errorf("the final stage's HEALTHCHECK %q does not run otad-healthcheck (which asks /readyz)", hcs)
	}
	if ep := instrs(final, "ENTRYPOINT"); len(ep) != 1 || !strings.Contains(ep[0], `"/usr/local/bin/otad"`) {
		t.Errorf("ENTRYPOINT %q does not run otad", ep)
	}
	if v := instrs(final, "VOLUME"); !slices.Contains(v, "/data") {
		t.Errorf("VOLUME %q, want /data", v)
	}

	env := map[string]string{}
	known := knownVars()
	for _, e := range instrs(final, "ENV") {
		for _, kv := range strings.Fields(e) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
			if strings.HasPrefix(k, "OTAD_") && !known[k] {
				t.Errorf("the image sets %s, which otad does not read", k)
			}
		}
	}
	if env["OTAD_DATA_DIR"] != "/data" {
		t.Errorf("the image's OTAD_DATA_DIR is %q, want the volume /data", env["OTAD_DATA_DIR"])
	}

	// Every port otad listens on, in the image and in compose, is exposed,
	// and so is MQTT over TLS.
	exposed := map[uint32]bool{}
	for _, e := range instrs(final, "EXPOSE") {
		for _, port := range strings.Fields(e) {
			n, err := strconv.ParseUint(strings.TrimSuffix(port, "/tcp"), 10, 16)
			if err != nil {
				t.Fatalf("EXPOSE %s", port)
			}
			exposed[uint32(n)] = true
		}
	}
	wantPorts := []uint32{1883, 8883, 8080}
	for _, port := range listenPorts(t, env) {
		wantPorts = append(wantPorts, port)
	}
	p := mustLoadCompose(t)
	for _, port := range listenPorts(t, serviceEnv(t, p, "otad")) {
		wantPorts = append(wantPorts, port)
	}
	for _, pc := range p.Services["otad"].Ports {
		wantPorts = append(wantPorts, pc.Target)
	}
	for _, port := range wantPorts {
		if !exposed[port] {
			t.Errorf("the image does not EXPOSE %d", port)
		}
	}
}

// TestDockerfileBuild runs the Dockerfile's own otad build command here:
// the binary must be static (it runs on distroless/static) and stamped
// with the VERSION build argument.
func TestDockerfileBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds otad with -trimpath; skipped in -short")
	}
	step := goBuildStep(t, readDockerfile(t)[0], "./cmd/otad")
	out := filepath.Join(t.TempDir(), "otad")
	step = regexp.MustCompile(`-o \S+`).ReplaceAllLiteralString(step, `-o "$OUT"`)
	cmd := exec.Command("sh", "-c", step)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "VERSION=v0.0.0-dockerfile-test", "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", step, err, b)
	}

	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Error("the binary needs a dynamic loader; distroless/static has none")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary links %v", libs)
	}

	b, err := exec.Command(out, "version").Output()
	if err != nil || string(b) != "otad v0.0.0-dockerfile-test\n" {
		t.Errorf("otad version printed %q (%v), want the VERSION build argument", b, err)
	}
}

// TestDockerignore checks that the build context keeps every file the
// image's two binaries are built from (Go files and embedded files, as go
// list reports them) and leaves out the deployment's secrets.
func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			if strings.HasPrefix(line, "!") {
				t.Fatalf(".dockerignore pattern %q: this test does not understand exceptions", line)
			}
			patterns = append(patterns, strings.TrimSuffix(line, "/"))
		}
	}
	ignored := func(rel string) bool {
		for _, p := range patterns {
			if base, ok := strings.CutPrefix(p, "**/"); ok {
				if m, _ := filepath.Match(base, filepath.Base(rel)); m {
					return true
				}
				continue
			}
			for dir := rel; dir != "."; dir = filepath.Dir(dir) {
				if m, _ := filepath.Match(p, dir); m {
					return true
				}
			}
		}
		return false
	}
	// deploy/.env holds the deployment's secrets: never in an image layer.
	for _, secret := range []string{"deploy/.env", ".git/config"} {
		if !ignored(secret) {
			t.Errorf(".dockerignore lets %s into the build context", secret)
		}
	}

	root, _ := filepath.Abs("../..")
	list := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}{{end}}`, "./cmd/otad", "./cmd/otad-healthcheck")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	files := strings.Fields(string(out))
	if len(files) < 10 {
		t.Fatalf("go list found only %v", files)
	}
	for _, rel := range append(files, "go.mod", "go.sum") {
		if filepath.IsAbs(rel) {
			rel, _ = filepath.Rel(root, rel)
		}
		if ignored(rel) {
			t.Errorf(".dockerignore leaves out %s, which the image is built from", rel)
		}
	}
}
