package faultproxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one entry of the proxy's request log.
type Request struct {
	Method string
	// Path is the URL path, without the query.
	Path string
	// Query is the raw query string, without "?".
	Query string
	// Status is the status sent to the client, or 0 when the proxy reset the connection or the
	// request is still in flight.
	Status int
	// Fault is the fault injected, or "" for a forwarded request.
	Fault Fault
}

// Fault names a fault that the proxy injected into a request.
type Fault string

const (
	// FaultFail is a status sent by FailNext.
	FaultFail Fault = "fail"
	// FaultReset is a connection reset by ResetAfter.
	FaultReset Fault = "reset"
	// FaultDelay is a request forwarded late by DelayNext.
	FaultDelay Fault = "delay"
)

// Proxy is an HTTP reverse proxy on 127.0.0.1 in front of one upstream, typically a registry.
// Rules are checked in the order they were added, and the first matching rule with requests
// left applies. All methods are safe for concurrent use.
type Proxy struct {
	// URL is the proxy's base URL, "http://127.0.0.1:P".
	URL string
	// Addr is the proxy's host:port.
	Addr string

	upstream *url.URL
	server   *httptest.Server
	forward  *httputil.ReverseProxy

	mu    sync.Mutex
	rules []*rule
	log   []*Request
}

type faultKind int

const (
	faultFail faultKind = iota
	faultReset
	faultDelay
)

type rule struct {
	kind      faultKind
	method    string
	path      *regexp.Regexp
	remaining int

	status     int
	retryAfter string
	bodyBytes  int64
	delay      time.Duration
}

// New starts a proxy that forwards to upstream, a plain-HTTP base URL such as
// "http://127.0.0.1:5000", and closes it on cleanup.
func New(t testing.TB, upstream string) *Proxy {
	t.Helper()

	target, err := url.Parse(upstream)
	if err != nil || target.Scheme != "http" || target.Host == "" {
		t.Fatalf("faultproxy: invalid upstream URL %q; pass a plain-HTTP base URL such as http://127.0.0.1:5000", upstream)
	}

	p := &Proxy{upstream: target}
	p.forward = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
		},
		Transport: &http.Transport{
			// No proxy from the environment: the upstream is local and must be reached directly.
			Proxy:               nil,
			DialContext:         (&net.Dialer{}).DialContext,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 16,
		},
		// Stream responses such as blob downloads as they arrive.
		FlushInterval:  -1,
		ModifyResponse: p.rewriteLocation,
		ErrorHandler:   p.forwardError,
	}

	p.server = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.server.Close)
	p.URL = p.server.URL
	p.Addr = p.server.Listener.Addr().String()
	return p
}

// FailNext responds to the next n requests matching method and pathRegexp with status, and a
// Retry-After header when retryAfter is not empty, without forwarding them. An empty method
// matches every method. pathRegexp is matched against the URL path, unanchored.
func (p *Proxy) FailNext(method, pathRegexp string, n int, status int, retryAfter string) {
	p.addRule(&rule{
		kind:       faultFail,
		method:     method,
		path:       regexp.MustCompile(pathRegexp),
		remaining:  n,
		status:     status,
		retryAfter: retryAfter,
	})
}

// ResetAfter makes the next n requests matching method and pathRegexp fail mid-upload. The
// proxy forwards exactly the first bodyBytes bytes of the request body on a new upstream
// connection and then closes its sending side, so the upstream sees the body end early. Once
// the upstream has finished with the request, the proxy resets the client connection (TCP
// RST), and the client sees the connection drop while it sends. A request whose body ends
// within bodyBytes is forwarded whole, and the client gets a reset instead of the response.
func (p *Proxy) ResetAfter(method, pathRegexp string, n int, bodyBytes int64) {
	p.addRule(&rule{
		kind:      faultReset,
		method:    method,
		path:      regexp.MustCompile(pathRegexp),
		remaining: n,
		bodyBytes: bodyBytes,
	})
}

// DelayNext holds each of the next n requests matching method and pathRegexp for delay
// before forwarding it, for client timeout tests. A request whose client gives up during the
// delay is not forwarded.
func (p *Proxy) DelayNext(method, pathRegexp string, n int, delay time.Duration) {
	p.addRule(&rule{
		kind:      faultDelay,
		method:    method,
		path:      regexp.MustCompile(pathRegexp),
		remaining: n,
		delay:     delay,
	})
}

// ClearRules removes every rule, including those with requests left.
func (p *Proxy) ClearRules() {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.rules = nil
}

// Count returns how many requests matching method and pathRegexp reached the proxy, faulted
// or not. An empty method matches every method.
func (p *Proxy) Count(method, pathRegexp string) int {
	path := regexp.MustCompile(pathRegexp)

	p.mu.Lock()
	defer p.mu.Unlock()

	count := 0
	for _, entry := range p.log {
		if (method == "" || entry.Method == method) && path.MatchString(entry.Path) {
			count++
		}
	}
	return count
}

// Requests returns a copy of the request log in arrival order.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()

	requests := make([]Request, len(p.log))
	for i, entry := range p.log {
		requests[i] = *entry
	}
	return requests
}

func (p *Proxy) addRule(r *rule) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.rules = append(p.rules, r)
}

// begin logs the request and returns its log entry and the rule to apply, or nil.
func (p *Proxy) begin(r *http.Request) (*Request, *rule) {
	p.mu.Lock()
	defer p.mu.Unlock()

	entry := &Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery}
	p.log = append(p.log, entry)

	for _, candidate := range p.rules {
		if candidate.remaining <= 0 {
			continue
		}
		if candidate.method != "" && candidate.method != r.Method {
			continue
		}
		if !candidate.path.MatchString(r.URL.Path) {
			continue
		}
		candidate.remaining--
		return entry, candidate
	}
	return entry, nil
}

// record sets the status and fault of a log entry. It runs before the response goes out, so a
// client that has its response always finds it in the log.
func (p *Proxy) record(entry *Request, status int, fault Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()

	entry.Status = status
	entry.Fault = fault
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	entry, matched := p.begin(r)

	if matched == nil {
		p.forwardRecorded(w, r, entry, "")
		return
	}

	switch matched.kind {
	case faultFail:
		p.record(entry, matched.status, FaultFail)
		writeInjectedError(w, matched.status, matched.retryAfter)

	case faultReset:
		p.record(entry, 0, FaultReset)
		p.serveReset(w, r, matched.bodyBytes)

	case faultDelay:
		select {
		case <-time.After(matched.delay):
		case <-r.Context().Done():
			p.record(entry, 0, FaultDelay)
			return
		}
		p.forwardRecorded(w, r, entry, FaultDelay)
	}
}

// forwardRecorded forwards r and records the response status in entry.
func (p *Proxy) forwardRecorded(w http.ResponseWriter, r *http.Request, entry *Request, fault Fault) {
	recorder := &statusRecorder{ResponseWriter: w, record: func(status int) { p.record(entry, status, fault) }}
	p.forward.ServeHTTP(recorder, r)
}

// injectedErrorCodes maps statuses to the OCI distribution error codes a registry sends with
// them. Other statuses get the code UNKNOWN, as the distribution registry sends.
var injectedErrorCodes = map[int]string{
	http.StatusUnauthorized:    "UNAUTHORIZED",
	http.StatusForbidden:       "DENIED",
	http.StatusNotFound:        "NAME_UNKNOWN",
	http.StatusTooManyRequests: "TOOMANYREQUESTS",
}

// writeInjectedError sends status with an OCI error body, as a registry would.
func writeInjectedError(w http.ResponseWriter, status int, retryAfter string) {
	code, ok := injectedErrorCodes[status]
	if !ok {
		code = "UNKNOWN"
	}

	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"faultproxy: injected status %d"}]}`+"\n", code, status)
}

// rewriteLocation points absolute Location headers that name the upstream at the proxy, so
// clients keep sending an upload session's requests through it.
func (p *Proxy) rewriteLocation(resp *http.Response) error {
	location := resp.Header.Get("Location")
	if location == "" {
		return nil
	}

	parsed, err := url.Parse(location)
	if err != nil || !parsed.IsAbs() || !strings.EqualFold(parsed.Host, p.upstream.Host) {
		return nil
	}
	parsed.Scheme = "http"
	parsed.Host = p.Addr
	resp.Header.Set("Location", parsed.String())
	return nil
}

// forwardError sends 502 when the upstream cannot be reached.
func (p *Proxy) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	w.WriteHeader(http.StatusBadGateway)
	io.WriteString(w, "faultproxy: forward "+r.Method+" "+r.URL.Path+" to "+p.upstream.String()+": "+err.Error()+"\n")
}

type statusRecorder struct {
	http.ResponseWriter
	record  func(status int)
	written bool
}

func (s *statusRecorder) WriteHeader(status int) {
	// Informational responses such as 100 Continue precede the final status.
	if !s.written && status >= 200 {
		s.written = true
		s.record(status)
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if !s.written {
		s.written = true
		s.record(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}

// Flush lets ReverseProxy stream through the recorder.
func (s *statusRecorder) Flush() {
	if flusher, ok := s.ResponseWriter.(http.Flusher); ok {
		flusher.Flush()
	}
}

// Unwrap gives http.ResponseController access to the client connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter {
	return s.ResponseWriter
}
