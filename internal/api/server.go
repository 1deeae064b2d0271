// Package api is otad's console REST API: products, devices, firmware,
// jobs, events, webhooks and tokens under /v1, bearer-token auth,
// problem+json errors, the OpenAPI document, health, readiness and
// Prometheus metrics; and the web console's files, served at / and
// /ui/{file}.
package api

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/otad/otad/internal/ota"
)

// Config is what the API needs from the rest of otad.
type Config struct {
	Logger *slog.Logger
	Store  ota.Store
	// Jobs creates and cancels upgrade jobs.
	Jobs Jobs
	// Blobs stores firmware images.
	Blobs ota.Blobs
	// MaxFirmwareSize limits one firmware image; <= 0 means
	// ota.DefaultMaxFirmwareSize.
	MaxFirmwareSize int64
	// UploadStallTimeout is how long a firmware upload may send nothing
	// before it is dropped (and leaves nothing behind); default 2m.
	UploadStallTimeout time.Duration
	// Download, when set, also serves firmware downloads at /{token} (see
	// NewDownload), for when the public URL points at this listener.
	Download http.Handler
	// Registry receives the API's metrics; Gatherer serves /metrics.
	Registry prometheus.Registerer
	Gatherer prometheus.Gatherer
	// RateLimit, when set, limits requests per client address and per
	// token (see RateLimiter); the download handler shares it.
	RateLimit *RateLimiter
	// MaxUploads caps the firmware uploads in progress at once (each holds
	// a hashing pipeline and a multipart upload); more are answered 429
	// with Retry-After. Default 8.
	MaxUploads int
	// BodyReadTimeout bounds how long a request's body may take to arrive
	// (a firmware upload instead must not stall for UploadStallTimeout);
	// default 30s. It holds before authentication too: a client that
	// sends headers and part of a body, then nothing, is cut off.
	BodyReadTimeout time.Duration
	// Console, when set, holds the web console's files (index.html and
	// what it loads, flat), served at / and /ui/{file}.
	Console fs.FS
	// Secrets seals the secrets of new devices for storage; nil stores
	// them as they are.
	Secrets *ota.SecretBox
	// EventPoll is how often an event stream looks for new events
	// (default 500ms); EventKeepAlive how long it may stay silent before
	// it sends a keep-alive comment (default 15s).
	EventPoll, EventKeepAlive time.Duration
}

// Server serves the console API.
type Server struct {
	log      *slog.Logger
	store    ota.Store
	jobs     Jobs
	blobs    ota.Blobs
	secrets  *ota.SecretBox
	gatherer prometheus.Gatherer

	maxFirmwareSize int64
	uploadStall     time.Duration
	bodyRead        time.Duration
	rateLimit       *RateLimiter
	uploads         chan struct{} // one token per upload in progress
	uploadsActive   prometheus.Gauge
	eventPoll       time.Duration
	streamsDone     chan struct{} // closed by CloseStreams
	closeStreams    sync.Once
	eventKeepAlive  time.Duration
	download        http.Handler
	consoleFiles    map[string]*consoleFile

	openAPI  []byte // the OpenAPI document as JSON
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	router   chi.Router
	// endpoints holds "METHOD pattern" of every route served (see route).
	endpoints map[string]bool
}

// New builds the API server and registers its metrics.
func New(cfg Config) (*Server, error) {
	s := &Server{
		log:      cfg.Logger.With("component", "api"),
		store:    cfg.Store,
		jobs:     cfg.Jobs,
		blobs:    cfg.Blobs,
		secrets:  cfg.Secrets,
		gatherer: cfg.Gatherer,

		maxFirmwareSize: cfg.MaxFirmwareSize,
		uploadStall:     cfg.UploadStallTimeout,
		bodyRead:        cfg.BodyReadTimeout,
		eventPoll:       cfg.EventPoll,
		streamsDone:     make(chan struct{}),
		eventKeepAlive:  cfg.EventKeepAlive,
		download:        cfg.Download,
		rateLimit:       cfg.RateLimit,

		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_http_requests_total",
			Help: "HTTP requests served, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "otad_http_request_duration_seconds",
			Help:    "HTTP request latency, by method and route pattern.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route"}),
		uploadsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otad_http_uploads_in_progress",
			Help: "Firmware uploads holding one of the MaxUploads slots (OTAD_MAX_UPLOADS).",
		}),
	}
	if s.maxFirmwareSize <= 0 {
		s.maxFirmwareSize = ota.DefaultMaxFirmwareSize
	}
	if s.uploadStall <= 0 {
		s.uploadStall = 2 * time.Minute
	}
	if cfg.MaxUploads <= 0 {
		cfg.MaxUploads = 8
	}
	s.uploads = make(chan struct{}, cfg.MaxUploads)
	if s.bodyRead <= 0 {
		s.bodyRead = 30 * time.Second
	}
	if s.eventPoll <= 0 {
		s.eventPoll = 500 * time.Millisecond
	}
	if s.eventKeepAlive <= 0 {
		s.eventKeepAlive = 15 * time.Second
	}
	for _, c := range []prometheus.Collector{s.requests, s.latency, s.uploadsActive} {
		if err := cfg.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	var err error
	if s.openAPI, err = openAPIDocJSON(); err != nil {
		return nil, err
	}
	if cfg.Console != nil {
		if s.consoleFiles, err = loadConsole(cfg.Console); err != nil {
			return nil, err
		}
	}
	s.router = s.routes()
	if s.endpoints, err = endpointsOf(s.router); err != nil {
		return nil, err
	}
	return s, nil
}

// CloseStreams ends every event stream, now and from now on: call it when
// the HTTP server shuts down (http.Server.RegisterOnShutdown), which would
// otherwise wait for the streams' clients to leave.
func (s *Server) CloseStreams() { s.closeStreams.Do(func() { close(s.streamsDone) }) }

// ServeHTTP makes Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	// HEAD is answered wherever GET is, as GET without the body.
	r.Use(middleware.Recoverer, s.measure, s.limitAddress, s.readDeadline, s.headAsGet, methodProblem)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, ota.Errorf(ota.ENOTFOUND, "no such resource"))
	})
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	// The listener that serves /metrics also serves downloads to anyone:
	// metrics need a token here (OTAD_METRICS_ADDR serves them alone).
	r.With(s.authenticate, s.authorize).Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	if s.consoleFiles != nil {
		// The console's files need no token: what it does, it does
		// through /v1. Two segments under /ui never collide with a
		// download token (one).
		r.Get("/", s.console)
		r.Get("/ui/{file}", s.console)
	}
	if s.download != nil {
		// Tokens never collide with the fixed routes, which chi matches first.
		r.Method(http.MethodGet, "/{token}", s.download)
		r.Method(http.MethodHead, "/{token}", s.download)
	}

	r.Route("/v1", func(r chi.Router) {
		// Every change, and every refusal for want of a token or of
		// scope, goes to the audit log; scopes come from one table.
		r.Use(s.audit, s.authenticate, s.authorize)
		r.Get("/openapi.json", s.openAPIJSON)
		r.Get("/openapi.yaml", s.openAPIYAML)
		r.Get("/events", s.handle(s.eventList))
		r.Get("/events/stream", s.handle(s.eventStream))
		r.Get("/audit", s.handle(s.auditList))
		r.Route("/tokens", func(r chi.Router) {
			r.Post("/", s.handle(s.tokenCreate))
			r.Get("/", s.handle(s.tokenList))
			r.Get("/{id}", s.handle(s.tokenGet))
			r.Delete("/{id}", s.handle(s.tokenDelete))
		})
		r.Route("/webhooks", func(r chi.Router) {
			r.Post("/", s.handle(s.webhookCreate))
			r.Get("/", s.handle(s.webhookList))
			r.Get("/{id}", s.handle(s.webhookGet))
			r.Patch("/{id}", s.handle(s.webhookPatch))
			r.Delete("/{id}", s.handle(s.webhookDelete))
			r.Post("/{id}/rotate-secret", s.handle(s.webhookRotate))
			r.Get("/{id}/deliveries", s.handle(s.webhookDeliveries))
		})
		r.Route("/products", func(r chi.Router) {
			r.Post("/", s.handle(s.productCreate))
			r.Get("/", s.handle(s.productList))
			r.Route("/{pid}", func(r chi.Router) {
				r.Get("/", s.handle(s.productGet))
				r.Route("/devices", func(r chi.Router) {
					r.Post("/", s.handle(s.deviceCreate))
					r.Get("/", s.handle(s.deviceList))
					r.Get("/{name}", s.handle(s.deviceGet))
					r.Patch("/{name}", s.handle(s.deviceUpdate))
					r.Delete("/{name}", s.handle(s.deviceDelete))
					r.Get("/{name}/events", s.handle(s.deviceEvents))
				})
				r.Post("/device-batches", s.handle(s.deviceBatch))
				r.Route("/jobs", func(r chi.Router) {
					r.Post("/", s.handle(s.jobCreate))
					r.Get("/", s.handle(s.jobList))
					r.Get("/{id}", s.handle(s.jobGet))
					r.Get("/{id}/devices", s.handle(s.jobDevices))
					for _, action := range []string{ota.JobActionCancel, ota.JobActionPause, ota.JobActionResume, ota.JobActionRetry, ota.JobActionAdvance} {
						r.Post("/{id}/"+action, s.handle(s.jobControl(action)))
					}
				})
				r.Route("/firmware", func(r chi.Router) {
					r.Post("/", s.handle(s.firmwareCreate))
					r.Get("/", s.handle(s.firmwareList))
					r.Get("/{version}", s.handle(s.firmwareGet))
					r.Delete("/{version}", s.handle(s.firmwareDelete))
				})
			})
		})
	})
	return r
}

// readDeadline gives every request with a body bodyRead to deliver it;
// handlers that read for longer (uploads) set their own. The deadline is
// lifted once the body has been read to its end: net/http then watches the
// connection for the client going away while the handler runs, and a read
// deadline passing there would cancel a long request (a job over a million
// devices, its cancellation) half way through. A request without a body
// gets none.
func (s *Server) readDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Now().Add(s.bodyRead))
			r.Body = &liftAtEOF{ReadCloser: r.Body, rc: rc}
		}
		next.ServeHTTP(w, r)
	})
}

// liftAtEOF lifts the connection's read deadline when its body has been
// read to the end.
type liftAtEOF struct {
	io.ReadCloser
	rc *http.ResponseController
}

func (b *liftAtEOF) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// isDownload reports whether r is routed to the download handler
// (/{token}).
func (s *Server) isDownload(r *http.Request) bool {
	p := r.URL.Path
	return s.download != nil && strings.Count(p, "/") == 1 && p != "/" && p != "/healthz" && p != "/readyz" && p != "/metrics"
}

// limitAddress takes one request from the client address's rate limit
// before anything else is done for it, authentication included. Downloads
// have their own rule (Download.ServeHTTP).
func (s *Server) limitAddress(next http.Handler) http.Handler {
	if s.rateLimit == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.isDownload(r) {
			if wait := s.rateLimit.take(addressKey(r)); wait > 0 {
				s.rateLimit.refuse(w, "address", wait)
				s.writeError(w, r, errRateLimited)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// errRateLimited answers a request over its rate limit.
var errRateLimited = &ota.Error{Code: ota.ETOOMANY, Message: "too many requests from this address or token; try again after Retry-After seconds"}

// headKey marks a HEAD request that is routed as a GET.
type headKey struct{}

// headAsGet routes a HEAD request to the GET handler of its path; only
// downloads (/{token}) have HEAD handlers of their own, which check the
// object without reading it. net/http sends no body for a HEAD, whatever
// the handler writes.
func (s *Server) headAsGet(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && !s.isDownload(r) {
			r = r.Clone(context.WithValue(r.Context(), headKey{}, true))
			r.Method = http.MethodGet
		}
		next.ServeHTTP(w, r)
	})
}

// isHead reports whether r was a HEAD request.
func isHead(r *http.Request) bool {
	return r.Method == http.MethodHead || r.Context().Value(headKey{}) != nil
}

// methodProblem turns the router's bare 405 into problem+json, with the
// methods the router listed in Allow joined into one header, plus HEAD
// beside GET and OPTIONS; an OPTIONS request gets 204 and that header.
func methodProblem(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&methodWriter{ResponseWriter: w, r: r}, r)
	})
}

type methodWriter struct {
	http.ResponseWriter
	r       *http.Request
	swallow bool
}

func (m *methodWriter) WriteHeader(code int) {
	if code != http.StatusMethodNotAllowed || m.swallow {
		m.ResponseWriter.WriteHeader(code)
		return
	}
	m.swallow = true
	h := m.Header()
	listed := map[string]bool{http.MethodOptions: true}
	for _, v := range h.Values("Allow") {
		listed[v] = true
		listed[http.MethodHead] = listed[http.MethodHead] || v == http.MethodGet
	}
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		if listed[m] {
			allow = append(allow, m)
		}
	}
	h.Set("Allow", strings.Join(allow, ", "))
	if m.r.Method == http.MethodOptions {
		m.ResponseWriter.WriteHeader(http.StatusNoContent)
		return
	}
	writeProblem(m.ResponseWriter, Problem{Type: "https://otad.dev/problems/method_not_allowed", Title: "Method Not Allowed",
		Status: http.StatusMethodNotAllowed, Detail: m.r.Method + " is not allowed here", Code: "method_not_allowed", Instance: m.r.URL.Path})
}

func (m *methodWriter) Write(b []byte) (int, error) {
	if m.swallow {
		return len(b), nil // the router's own 405 text
	}
	return m.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (m *methodWriter) Unwrap() http.ResponseWriter { return m.ResponseWriter }

// measure counts requests and their latency by route pattern, never by
// raw path, so that label cardinality stays bounded.
func (s *Server) measure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		s.requests.WithLabelValues(r.Method, route, strconv.Itoa(status)).Inc()
		s.latency.WithLabelValues(r.Method, route).Observe(time.Since(start).Seconds())
	})
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.writeError(w, r, &ota.Error{Code: ota.EUNAVAILABLE, Message: "database unreachable"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
