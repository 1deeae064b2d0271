package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/otad/otad/internal/loglimit"
	"github.com/otad/otad/internal/ota"
)

// Config is otad's whole configuration. Every field is a flag whose default
// comes from an OTAD_* environment variable; secrets can also come from a
// file named by the variable with a _FILE suffix.
type Config struct {
	HTTPAddr        string
	MQTTAddr        string
	MQTTTLSAddr     string
	MQTTTLSCert     string
	MQTTTLSKey      string
	MQTTTLSClientCA string
	DownloadAddr    string
	MaxFirmwareSize int64
	DataDir         string
	DatabaseURL     string
	S3Bucket        string
	S3Endpoint      string
	S3PathStyle     bool
	PublicURL       string
	MetricsAddr     string
	PprofAddr       string
	// PublicURLAllowPort lets OTAD_PUBLIC_URL name a port, which breaks
	// devices on the C SDK (PROTOCOL.md).
	PublicURLAllowPort bool
	APIToken           string
	SecretKey          string
	SecretKeyOld       string
	LogLevel           string
	LogFormat          string
	ShutdownTimeout    time.Duration
	BodyReadTimeout    time.Duration
	HeaderTimeout      time.Duration
	IdleTimeout        time.Duration
	MaxUploads         int64
	RateLimit          int64
	SweepInterval      time.Duration
	SweepGrace         time.Duration
	RateBurst          int64
	EventRetention     time.Duration
	// Webhook delivery: one request's timeout, the first retry's wait
	// (doubling up to WebhookBackoffMax) and how long an endpoint may fail
	// before it is disabled.
	WebhookTimeout      time.Duration
	WebhookBackoff      time.Duration
	WebhookBackoffMax   time.Duration
	WebhookDisableAfter time.Duration
}

// configVar is one OTAD_* setting bound to a flag.
type configVar struct {
	Env     string // OTAD_HTTP_ADDR
	Flag    string // http-addr
	Default string
	Usage   string
	Secret  bool // may also be read from the file named by Env_FILE
}

// vars lists every OTAD_* setting; the README's configuration reference is
// checked against it by a test.
func (c *Config) vars() []struct {
	configVar
	ptr any
} {
	return []struct {
		configVar
		ptr any
	}{
		{configVar{"OTAD_HTTP_ADDR", "http-addr", ":8080", "console API, health and metrics listen address", false}, &c.HTTPAddr},
		{configVar{"OTAD_MQTT_ADDR", "mqtt-addr", ":1883", "device MQTT listen address", false}, &c.MQTTAddr},
		{configVar{"OTAD_MQTT_TLS_ADDR", "mqtt-tls-addr", "", "device MQTT-over-TLS listen address, such as :8883; needs the certificate and key", false}, &c.MQTTTLSAddr},
		{configVar{"OTAD_MQTT_TLS_CERT", "mqtt-tls-cert", "", "PEM certificate (chain) file of the TLS listener", false}, &c.MQTTTLSCert},
		{configVar{"OTAD_MQTT_TLS_KEY", "mqtt-tls-key", "", "PEM private key file of the TLS listener", false}, &c.MQTTTLSKey},
		{configVar{"OTAD_MQTT_TLS_CLIENT_CA", "mqtt-tls-client-ca", "", "PEM file of the CAs whose client certificates devices may log in with on the TLS listener (CommonName = client ID); others still log in with the signed password", false}, &c.MQTTTLSClientCA},
		{configVar{"OTAD_METRICS_ADDR", "metrics-addr", "", "listen address serving /metrics alone and without a token, for a scraper on a private network; empty: /metrics on the HTTP address, with a token", false}, &c.MetricsAddr},
		{configVar{"OTAD_PPROF_ADDR", "pprof-addr", "", "listen address serving Go's runtime profiles (/debug/pprof/) alone and without a token, for loopback or a private network; empty: off", false}, &c.PprofAddr},
		{configVar{"OTAD_DOWNLOAD_ADDR", "download-addr", "", "separate firmware download listen address, such as :80 (device SDKs ignore URL ports); empty serves downloads on the HTTP address", false}, &c.DownloadAddr},
		{configVar{"OTAD_MAX_FIRMWARE_SIZE", "max-firmware-size", "2147483648", "largest firmware image accepted, in bytes", false}, &c.MaxFirmwareSize},
		{configVar{"OTAD_DATA_DIR", "data-dir", "./data", "directory of the SQLite file and local firmware files", false}, &c.DataDir},
		{configVar{"OTAD_DATABASE_URL", "database-url", "", "postgres://… selects PostgreSQL; empty uses SQLite in the data dir", true}, &c.DatabaseURL},
		{configVar{"OTAD_S3_BUCKET", "s3-bucket", "", "S3 bucket for firmware; empty stores firmware in the data dir", false}, &c.S3Bucket},
		{configVar{"OTAD_S3_ENDPOINT", "s3-endpoint", "", "S3-compatible endpoint URL; empty uses AWS", false}, &c.S3Endpoint},
		{configVar{"OTAD_S3_PATH_STYLE", "s3-path-style", "false", "address the bucket in the path, as most S3-compatible servers need", false}, &c.S3PathStyle},
		{configVar{"OTAD_PUBLIC_URL", "public-url", "", "base URL devices download firmware from, with no port (:80 is dropped); derived from the HTTP address when empty", false}, &c.PublicURL},
		{configVar{"OTAD_PUBLIC_URL_ALLOW_PORT", "public-url-allow-port", "false", "allow a port other than 80 (443) in OTAD_PUBLIC_URL; devices on Tencent's C SDK then cannot download", false}, &c.PublicURLAllowPort},
		{configVar{"OTAD_API_TOKEN", "api-token", "", "bootstrap admin token of the console API; a new value revokes the previous one; when empty and no token was ever made, one is generated and printed once", true}, &c.APIToken},
		{configVar{"OTAD_SECRET_KEY", "secret-key", "", "32-byte key (base64 or hex) that encrypts device secrets at rest (AES-256-GCM); empty stores them unencrypted", true}, &c.SecretKey},
		{configVar{"OTAD_SECRET_KEY_OLD", "secret-key-old", "", "the previous OTAD_SECRET_KEY during a key rotation: secrets it opens are re-encrypted with the new key at start", true}, &c.SecretKeyOld},
		{configVar{"OTAD_LOG_LEVEL", "log-level", "info", "debug, info, warn or error", false}, &c.LogLevel},
		{configVar{"OTAD_LOG_FORMAT", "log-format", "text", "text or json", false}, &c.LogFormat},
		{configVar{"OTAD_MAX_UPLOADS", "max-uploads", "8", "firmware uploads in progress at once; more are answered 429 with Retry-After", false}, &c.MaxUploads},
		{configVar{"OTAD_RATE_LIMIT", "rate-limit", "50", "console API requests per second per client address and per token; more are answered 429 with Retry-After; 0 turns the limit off (downloads: see Limits)", false}, &c.RateLimit},
		{configVar{"OTAD_RATE_BURST", "rate-burst", "100", "requests a client address or token may send at once above OTAD_RATE_LIMIT", false}, &c.RateBurst},
		{configVar{"OTAD_BODY_READ_TIMEOUT", "body-read-timeout", "30s", "how long a request body may take to arrive (firmware uploads: how long they may send nothing); a stalled client is cut off", false}, &c.BodyReadTimeout},
		{configVar{"OTAD_HEADER_TIMEOUT", "header-timeout", "10s", "how long a request's headers may take to arrive, on every HTTP listener", false}, &c.HeaderTimeout},
		{configVar{"OTAD_IDLE_TIMEOUT", "idle-timeout", "2m", "how long an HTTP connection may wait for its next request, on every HTTP listener", false}, &c.IdleTimeout},
		{configVar{"OTAD_SHUTDOWN_TIMEOUT", "shutdown-timeout", "15s", "how long in-flight work may take to finish on shutdown", false}, &c.ShutdownTimeout},
		{configVar{"OTAD_SWEEP_INTERVAL", "sweep-interval", "1h", "how often firmware storage is swept of leftovers (also at start): images without a firmware row, unfinished uploads, temporary files", false}, &c.SweepInterval},
		{configVar{"OTAD_SWEEP_GRACE", "sweep-grace", "24h", "how old a leftover must be before the sweep removes it; longer than any upload takes", false}, &c.SweepGrace},
		{configVar{"OTAD_EVENT_RETENTION", "event-retention", "720h", "how long the event log, device history, audit log and webhook delivery records are kept", false}, &c.EventRetention},
		{configVar{"OTAD_WEBHOOK_TIMEOUT", "webhook-timeout", "10s", "how long one webhook request may take, connecting included; longer counts as a failure", false}, &c.WebhookTimeout},
		{configVar{"OTAD_WEBHOOK_BACKOFF", "webhook-backoff", "5s", "wait before retrying a failed webhook delivery; doubled per failure in a row, with jitter", false}, &c.WebhookBackoff},
		{configVar{"OTAD_WEBHOOK_BACKOFF_MAX", "webhook-backoff-max", "1h", "longest wait between webhook retries", false}, &c.WebhookBackoffMax},
		{configVar{"OTAD_WEBHOOK_DISABLE_AFTER", "webhook-disable-after", "24h", "a webhook whose deliveries all fail for this long is disabled (webhook.disabled, with the reason on the webhook)", false}, &c.WebhookDisableAfter},
	}
}

// parseConfig reads flags, with defaults from the environment via getenv.
func parseConfig(name string, args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: otad [command] [flags]

Commands:
  serve      run otad (the default)
  migrate    apply the database migrations and exit
  version    print the version and exit (also --version)

Every flag also reads its default from the environment variable named after it.

Flags of %s:
`, name)
		fs.PrintDefaults()
	}
	for _, v := range c.vars() {
		def := v.Default
		if e := getenv(v.Env); e != "" {
			def = e
		} else if v.Secret {
			if file := getenv(v.Env + "_FILE"); file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return nil, fmt.Errorf("%s_FILE: %w", v.Env, err)
				}
				def = strings.TrimSpace(string(b))
			}
		}
		usage := v.Usage + " (" + v.Env + ")"
		switch p := v.ptr.(type) {
		case *string:
			if v.Secret {
				// -h prints defaults: a secret's must not show.
				fs.StringVar(p, v.Flag, "", usage)
				*p = def
			} else {
				fs.StringVar(p, v.Flag, def, usage)
			}
		case *bool:
			b, err := strconv.ParseBool(def)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not true or false", v.Env, def)
			}
			fs.BoolVar(p, v.Flag, b, usage)
		case *int64:
			n, err := strconv.ParseInt(def, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not a whole number", v.Env, def)
			}
			fs.Int64Var(p, v.Flag, n, usage)
		case *time.Duration:
			d, err := time.ParseDuration(def)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not a duration such as 15s", v.Env, def)
			}
			fs.DurationVar(p, v.Flag, d, usage)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.Validate()
}

// Validate checks combinations of settings.
func (c *Config) Validate() error {
	if c.DatabaseURL != "" && !strings.HasPrefix(c.DatabaseURL, "postgres://") && !strings.HasPrefix(c.DatabaseURL, "postgresql://") {
		return fmt.Errorf("OTAD_DATABASE_URL must start with postgres:// (leave it empty for SQLite)")
	}
	if c.PublicURL != "" {
		if _, err := ota.DownloadBase(c.PublicURL, c.PublicURLAllowPort); err != nil {
			return fmt.Errorf("OTAD_PUBLIC_URL: %s", ota.ErrorMessage(err))
		}
	}
	if (c.MQTTTLSAddr != "") != (c.MQTTTLSCert != "" && c.MQTTTLSKey != "") {
		return fmt.Errorf("OTAD_MQTT_TLS_ADDR, OTAD_MQTT_TLS_CERT and OTAD_MQTT_TLS_KEY go together")
	}
	if c.MQTTTLSClientCA != "" && c.MQTTTLSAddr == "" {
		return fmt.Errorf("OTAD_MQTT_TLS_CLIENT_CA needs the TLS listener: set OTAD_MQTT_TLS_ADDR, OTAD_MQTT_TLS_CERT and OTAD_MQTT_TLS_KEY")
	}
	if c.MaxUploads < 1 || c.MaxUploads > 10000 {
		return fmt.Errorf("OTAD_MAX_UPLOADS must be from 1 to 10000")
	}
	if c.RateLimit < 0 || c.RateLimit > 1_000_000 {
		return fmt.Errorf("OTAD_RATE_LIMIT must be from 0 (no limit) to 1000000 requests per second")
	}
	if c.RateBurst < 1 || c.RateBurst > 1_000_000 {
		return fmt.Errorf("OTAD_RATE_BURST must be from 1 to 1000000")
	}
	for _, d := range []struct {
		env string
		d   time.Duration
	}{{"OTAD_BODY_READ_TIMEOUT", c.BodyReadTimeout}, {"OTAD_HEADER_TIMEOUT", c.HeaderTimeout}, {"OTAD_IDLE_TIMEOUT", c.IdleTimeout},
		{"OTAD_SWEEP_INTERVAL", c.SweepInterval}, {"OTAD_SWEEP_GRACE", c.SweepGrace}} {
		if d.d < time.Second {
			return fmt.Errorf("%s must be at least 1s", d.env)
		}
	}
	if c.EventRetention < time.Hour {
		return fmt.Errorf("OTAD_EVENT_RETENTION must be at least 1h")
	}
	if c.WebhookTimeout < time.Second {
		return fmt.Errorf("OTAD_WEBHOOK_TIMEOUT must be at least 1s")
	}
	if c.WebhookBackoff < 10*time.Millisecond || c.WebhookBackoffMax < c.WebhookBackoff {
		return fmt.Errorf("OTAD_WEBHOOK_BACKOFF must be at least 10ms, and OTAD_WEBHOOK_BACKOFF_MAX at least that")
	}
	if c.WebhookDisableAfter < time.Second {
		return fmt.Errorf("OTAD_WEBHOOK_DISABLE_AFTER must be at least 1s")
	}
	if c.MaxFirmwareSize < 1 {
		return fmt.Errorf("OTAD_MAX_FIRMWARE_SIZE must be a positive number of bytes")
	}
	if c.DataDir == "" {
		return fmt.Errorf("OTAD_DATA_DIR must not be empty")
	}
	if c.S3Endpoint != "" && c.S3Bucket == "" {
		return fmt.Errorf("OTAD_S3_ENDPOINT is set but OTAD_S3_BUCKET is not")
	}
	if _, err := c.logLevel(); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("OTAD_LOG_FORMAT must be text or json")
	}
	if c.APIToken != "" && len(c.APIToken) < 16 {
		return fmt.Errorf("OTAD_API_TOKEN must be at least 16 characters")
	}
	if _, err := c.secretBox(); err != nil {
		return err
	}
	return nil
}

func (c *Config) logLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, fmt.Errorf("OTAD_LOG_LEVEL must be debug, info, warn or error")
	}
	return l, nil
}

// logBurst is how many lines of one message otad writes per second at
// most; the next line let through says how many were held back.
const logBurst = 10

func (c *Config) logger(w io.Writer) *slog.Logger {
	level, _ := c.logLevel()
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(loglimit.New(h, logBurst))
}

// secretBox returns the box that seals device secrets with OTAD_SECRET_KEY
// (opening OTAD_SECRET_KEY_OLD's too), or nil when no key is set.
func (c *Config) secretBox() (*ota.SecretBox, error) {
	if c.SecretKey == "" {
		if c.SecretKeyOld != "" {
			return nil, fmt.Errorf("OTAD_SECRET_KEY_OLD is set but OTAD_SECRET_KEY is not")
		}
		return nil, nil
	}
	key, err := ota.ParseSecretKey(c.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("OTAD_SECRET_KEY: %s", ota.ErrorMessage(err))
	}
	var old []byte
	if c.SecretKeyOld != "" {
		if old, err = ota.ParseSecretKey(c.SecretKeyOld); err != nil {
			return nil, fmt.Errorf("OTAD_SECRET_KEY_OLD: %s", ota.ErrorMessage(err))
		}
	}
	return ota.NewSecretBox(key, old)
}
