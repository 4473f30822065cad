package push

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
)

// RegistryError is an unexpected response from a registry, with the OCI error codes of
// its body when it sent any.
type RegistryError struct {
	Registry   string
	Method     string
	Path       string
	StatusCode int
	Status     string
	Codes      []ErrorCode
	retryAfter *http.Response // kept for its Retry-After header only
}

// ErrorCode is one entry of the OCI error body `{"errors":[{"code":…,"message":…}]}`.
type ErrorCode struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *RegistryError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "registry %s returned %s to %s %s", e.Registry, e.Status, e.Method, e.Path)
	for _, code := range e.Codes {
		fmt.Fprintf(&b, ": %s", code.Code)
		if code.Message != "" {
			fmt.Fprintf(&b, " (%s)", code.Message)
		}
	}
	return b.String()
}

// HasCode reports whether the registry's error body contains code.
func (e *RegistryError) HasCode(code string) bool {
	for _, c := range e.Codes {
		if c.Code == code {
			return true
		}
	}
	return false
}

// newRegistryError reads res's body (bounded) into a RegistryError and closes it.
func newRegistryError(res *http.Response) *RegistryError {
	defer res.Body.Close()
	e := &RegistryError{
		Registry:   res.Request.URL.Host,
		Method:     res.Request.Method,
		Path:       res.Request.URL.Path,
		StatusCode: res.StatusCode,
		Status:     res.Status,
		retryAfter: &http.Response{Header: res.Header},
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	var parsed struct {
		Errors []ErrorCode `json:"errors"`
	}
	if json.Unmarshal(body, &parsed) == nil {
		e.Codes = parsed.Errors
	}
	if len(e.Codes) == 0 && len(strings.TrimSpace(string(body))) > 0 && len(body) < 300 {
		e.Codes = []ErrorCode{{Code: "UNKNOWN", Message: strings.TrimSpace(string(body))}}
	}
	return e
}

// StepError names the destination, blob or manifest and protocol step of a failure.
type StepError struct {
	Destination string
	Object      string // "blob sha256:… (layer 2 of manifest sha256:…)" or "manifest sha256:…"
	Step        string
	Err         error
}

func (e *StepError) Error() string {
	message := fmt.Sprintf("push to %s: %s: %s: %v", e.Destination, e.Object, e.Step, e.Err)
	if errors.Is(e.Err, syscall.ECONNREFUSED) {
		message += "; is the registry running and listening on that address?"
	}
	return message
}

func (e *StepError) Unwrap() error { return e.Err }

func basicToken(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// drain reads a little of an unwanted body so the connection can be reused, then
// closes it.
func drain(res *http.Response) {
	io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
}
