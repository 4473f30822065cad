package push

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// HeaderSource supplies extra headers for requests to a URI: the Bazel credential
// helper client satisfies it.
type HeaderSource interface {
	Get(ctx context.Context, uri string) (http.Header, error)
}

// authTransport adds credentials to requests for one registry host and repository.
// It speaks the registry token protocol (a 401 challenge naming a Bearer realm, a token
// fetched with Basic credentials or a refresh token) and plain Basic auth. Credentials
// go only to the registry host itself: a redirect to blob storage elsewhere gets none.
type authTransport struct {
	base     http.RoundTripper
	host     string
	scheme   string
	scopes   []string
	keychain authn.Keychain
	helper   HeaderSource

	mu        sync.Mutex
	challenge *challenge // nil until the first 401
	token     string
	expiry    time.Time
}

type challenge struct {
	scheme string // "bearer" or "basic"
	params map[string]string
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.host {
		return t.base.RoundTrip(req)
	}

	if t.helper != nil {
		// One URI per registry, so the helper runs once per registry rather than once
		// per blob path; helpers hand out host-wide credentials.
		headers, err := t.helper.Get(req.Context(), t.scheme+"://"+t.host+"/v2/")
		if err != nil {
			return nil, fmt.Errorf("credential helper for registry %s: %w", t.host, err)
		}
		req = req.Clone(req.Context())
		for name, values := range headers {
			req.Header[http.CanonicalHeaderKey(name)] = values
		}
		return t.base.RoundTrip(req)
	}

	authorization, err := t.authorization(req.Context(), false)
	if err != nil {
		return nil, err
	}
	res, err := t.base.RoundTrip(withAuthorization(req, authorization))
	if err != nil || res.StatusCode != http.StatusUnauthorized {
		return res, err
	}

	// One re-authentication: the token may have expired, or this is the first 401 and
	// it tells us the challenge. A request whose body was already consumed cannot be
	// replayed here; the caller's retry loop sends it again with the new token.
	if !t.learnChallenge(res) {
		return res, nil
	}
	if req.Body != nil && req.GetBody == nil {
		return res, nil
	}
	authorization, err = t.authorization(req.Context(), true)
	if err != nil {
		res.Body.Close()
		return nil, err
	}
	if authorization == "" {
		return res, nil
	}
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			res.Body.Close()
			return nil, err
		}
		retry.Body = body
	}
	drain(res)
	return t.base.RoundTrip(withAuthorization(retry, authorization))
}

func withAuthorization(req *http.Request, authorization string) *http.Request {
	if authorization == "" {
		return req
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", authorization)
	return req
}

// learnChallenge records the WWW-Authenticate challenge of a 401 and reports whether
// trying again with (new) credentials can help.
func (t *authTransport) learnChallenge(res *http.Response) bool {
	c := parseChallenge(res.Header.Get("WWW-Authenticate"))
	if c == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.challenge = c
	t.token = ""
	return true
}

// authorization returns the Authorization header value for the next request, fetching
// a token when the challenge requires one and none is valid (or refresh is set).
func (t *authTransport) authorization(ctx context.Context, refresh bool) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.challenge == nil {
		return "", nil
	}
	auth, err := t.credentials()
	if err != nil {
		return "", err
	}
	switch t.challenge.scheme {
	case "basic":
		if auth.Username == "" && auth.Password == "" {
			return "", nil
		}
		return "Basic " + basicToken(auth.Username, auth.Password), nil
	case "bearer":
		if t.token == "" || refresh || time.Now().After(t.expiry) {
			if err := t.fetchToken(ctx, auth); err != nil {
				return "", err
			}
		}
		return "Bearer " + t.token, nil
	}
	return "", nil
}

func (t *authTransport) credentials() (*authn.AuthConfig, error) {
	if t.keychain == nil {
		return &authn.AuthConfig{}, nil
	}
	registry, err := name.NewRegistry(t.host, name.WeakValidation)
	if err != nil {
		return nil, fmt.Errorf("invalid registry %q: %w", t.host, err)
	}
	authenticator, err := t.keychain.Resolve(registry)
	if err != nil {
		return nil, fmt.Errorf("reading credentials for registry %s from the docker config: %w", t.host, err)
	}
	return authn.Authorization(context.Background(), authenticator)
}

type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// fetchToken requests a token for t.scopes from the challenge's realm: a GET with Basic
// credentials, or the OAuth2 refresh-token POST when the docker config holds an
// identity token.
func (t *authTransport) fetchToken(ctx context.Context, auth *authn.AuthConfig) error {
	realm := t.challenge.params["realm"]
	realmURL, err := url.Parse(realm)
	if err != nil || realm == "" {
		return fmt.Errorf("registry %s: invalid token realm %q in its WWW-Authenticate challenge", t.host, realm)
	}
	query := url.Values{}
	if service := t.challenge.params["service"]; service != "" {
		query.Set("service", service)
	}
	for _, scope := range t.scopes {
		query.Add("scope", scope)
	}

	var req *http.Request
	if auth.IdentityToken != "" {
		query.Set("grant_type", "refresh_token")
		query.Set("refresh_token", auth.IdentityToken)
		query.Set("client_id", "img")
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, realmURL.String(), strings.NewReader(query.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		realmURL.RawQuery = mergeQuery(realmURL.Query(), query).Encode()
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, realmURL.String(), nil)
		if err == nil && (auth.Username != "" || auth.Password != "") {
			req.SetBasicAuth(auth.Username, auth.Password)
		}
	}
	if err != nil {
		return err
	}

	res, err := t.base.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("registry %s: fetching a token from %s: %w", t.host, realmURL.Host, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("registry %s: token server %s returned %s: %s; check the credentials for %s in your docker config or credential helper", t.host, realmURL.Host, res.Status, strings.TrimSpace(string(body)), t.host)
	}
	var token tokenResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&token); err != nil {
		return fmt.Errorf("registry %s: token server %s sent invalid JSON: %w", t.host, realmURL.Host, err)
	}
	t.token = token.Token
	if t.token == "" {
		t.token = token.AccessToken
	}
	if t.token == "" {
		return fmt.Errorf("registry %s: token server %s sent no token", t.host, realmURL.Host)
	}
	// The token spec's default lifetime is 60 seconds; renew a little early.
	lifetime := time.Duration(token.ExpiresIn) * time.Second
	if lifetime < 60*time.Second {
		lifetime = 60 * time.Second
	}
	t.expiry = time.Now().Add(lifetime - 10*time.Second)
	return nil
}

func mergeQuery(a, b url.Values) url.Values {
	for k, vs := range b {
		for _, v := range vs {
			a.Add(k, v)
		}
	}
	return a
}

// parseChallenge parses `Bearer realm="…",service="…"` or `Basic realm="…"`.
func parseChallenge(header string) *challenge {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(header), " ")
	scheme = strings.ToLower(scheme)
	if scheme != "bearer" && scheme != "basic" {
		return nil
	}
	c := &challenge{scheme: scheme, params: map[string]string{}}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,")
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		var value string
		if strings.HasPrefix(after, `"`) {
			end := strings.Index(after[1:], `"`)
			if end < 0 {
				value, rest = after[1:], ""
			} else {
				value, rest = after[1:end+1], after[end+2:]
			}
		} else {
			value, rest, _ = strings.Cut(after, ",")
		}
		c.params[strings.ToLower(strings.TrimSpace(key))] = value
	}
	return c
}
