package testpeer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// htpasswdLine returns one htpasswd line with a bcrypt hash, the only hash the distribution
// registry accepts; bazel-remote accepts it too.
func htpasswdLine(t testing.TB, user, password string) string {
	t.Helper()

	// The minimum cost keeps auth checks fast: each request through the registry verifies it.
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatalf("testpeer: bcrypt hash for user %q: %v", user, err)
	}
	return user + ":" + string(hash) + "\n"
}

// tokenLifetime is how long an issued token stays valid.
const tokenLifetime = 5 * time.Minute

// TokenServer is a registry token server in the test process, as described by the Docker
// registry token authentication spec: it checks one user's password and returns ES256-signed
// JWTs that grant every requested scope. The registry trusts it through a self-signed
// certificate whose DER form is sent in each token's x5c header.
type TokenServer struct {
	// Service is the audience the registry expects (auth.token.service).
	Service string
	// Issuer is the iss claim the registry expects (auth.token.issuer).
	Issuer string

	server   *httptest.Server
	user     string
	password string
	key      *ecdsa.PrivateKey
	certDER  []byte
	issued   atomic.Int64
	rejected atomic.Int64
}

// StartTokenServer starts a token server on 127.0.0.1 that accepts user and password and
// closes on cleanup.
func StartTokenServer(t testing.TB, user, password string) *TokenServer {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testpeer: token server key: %v", err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "testpeer token issuer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	certDER, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("testpeer: token server certificate: %v", err)
	}

	ts := &TokenServer{
		Service:  "testpeer-registry",
		Issuer:   "testpeer-token-issuer",
		user:     user,
		password: password,
		key:      key,
		certDER:  certDER,
	}
	ts.server = httptest.NewServer(http.HandlerFunc(ts.serveToken))
	t.Cleanup(ts.server.Close)
	return ts
}

// Realm returns the token endpoint URL (auth.token.realm), "http://localhost:P/token". The
// server listens on 127.0.0.1, but the realm names it localhost. go-containerregistry v0.22.1
// rejects a realm whose host is a loopback or private IP literal other than the registry's
// own host:port, and it does not resolve names for that check.
func (ts *TokenServer) Realm() string {
	port := ts.server.Listener.Addr().(*net.TCPAddr).Port
	return "http://localhost:" + strconv.Itoa(port) + "/token"
}

// CertificatePEM returns the signing certificate for auth.token.rootcertbundle.
func (ts *TokenServer) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.certDER})
}

// Issued returns how many tokens the server has issued.
func (ts *TokenServer) Issued() int64 {
	return ts.issued.Load()
}

// Rejected returns how many token requests failed the credential check.
func (ts *TokenServer) Rejected() int64 {
	return ts.rejected.Load()
}

// serveToken handles GET with HTTP basic auth and POST with an OAuth2 password grant.
func (ts *TokenServer) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" {
		http.NotFound(w, r)
		return
	}

	var user, password string
	var ok bool
	switch r.Method {
	case http.MethodGet:
		user, password, ok = r.BasicAuth()
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			http.Error(w, "invalid form: "+err.Error(), http.StatusBadRequest)
			return
		}
		if r.PostForm.Get("grant_type") != "password" {
			http.Error(w, "unsupported grant_type; only password is supported", http.StatusBadRequest)
			return
		}
		user, password, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), true
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}

	if !ok || user != ts.user || password != ts.password {
		ts.rejected.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="testpeer-token"`)
		http.Error(w, "invalid user name or password", http.StatusUnauthorized)
		return
	}

	query := r.URL.Query()
	if r.Method == http.MethodPost {
		query = r.PostForm
	}
	token, err := ts.sign(user, query.Get("service"), parseScopes(query["scope"]))
	if err != nil {
		http.Error(w, "sign token: "+err.Error(), http.StatusInternalServerError)
		return
	}
	ts.issued.Add(1)

	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token":        token,
		"access_token": token,
		"expires_in":   int(tokenLifetime.Seconds()),
		"issued_at":    time.Now().UTC().Format(time.RFC3339),
	})
}

// resourceActions is one entry of a token's access claim.
type resourceActions struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// parseScopes parses scopes such as "repository:team/app:pull,push". Scopes may also be
// space-separated within one parameter. The name sits between the first and the last colon
// because a name may itself contain colons.
func parseScopes(params []string) []resourceActions {
	access := []resourceActions{}
	for _, param := range params {
		for _, scope := range strings.Fields(param) {
			first := strings.Index(scope, ":")
			last := strings.LastIndex(scope, ":")
			if first < 0 || first == last {
				continue
			}
			access = append(access, resourceActions{
				Type:    scope[:first],
				Name:    scope[first+1 : last],
				Actions: strings.Split(scope[last+1:], ","),
			})
		}
	}
	return access
}

// sign returns a compact JWS (ES256) with the registry token claims.
func (ts *TokenServer) sign(subject, audience string, access []resourceActions) (string, error) {
	if audience == "" {
		audience = ts.Service
	}
	now := time.Now()

	header, err := json.Marshal(map[string]any{
		"alg": "ES256",
		"typ": "JWT",
		"x5c": []string{base64.StdEncoding.EncodeToString(ts.certDER)},
	})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{
		"iss":    ts.Issuer,
		"sub":    subject,
		"aud":    audience,
		"exp":    now.Add(tokenLifetime).Unix(),
		"nbf":    now.Add(-time.Minute).Unix(),
		"iat":    now.Unix(),
		"jti":    randomHex(16),
		"access": access,
	})
	if err != nil {
		return "", err
	}

	encoding := base64.RawURLEncoding
	signingInput := encoding.EncodeToString(header) + "." + encoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, ts.key, digest[:])
	if err != nil {
		return "", err
	}

	// JWS ES256 signatures are R and S as fixed-size 32-byte big-endian integers, not ASN.1.
	signature := make([]byte, 64)
	r.FillBytes(signature[:32])
	s.FillBytes(signature[32:])
	return signingInput + "." + encoding.EncodeToString(signature), nil
}
