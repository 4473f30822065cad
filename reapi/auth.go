package reapi

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/rulesimg/img/credhelper"
)

// callAuth adds the configured headers, basic auth and credential-helper headers to every
// call. It is an interceptor rather than grpc.PerRPCCredentials because those return one
// value per header name, and REAPI headers may repeat.
type callAuth struct {
	endpoint  string
	authority string
	pairs     []string // static headers as metadata key, value pairs
	helper    *credhelper.Helper
}

func newCallAuth(endpoint, authority string, headers map[string][]string, basicAuth string, helper *credhelper.Helper) *callAuth {
	a := &callAuth{endpoint: endpoint, authority: authority, helper: helper}
	for name, values := range headers {
		for _, value := range values {
			a.pairs = append(a.pairs, strings.ToLower(name), value)
		}
	}
	if basicAuth != "" {
		a.pairs = append(a.pairs, "authorization", basicAuth)
	}
	return a
}

// credentialError is a credential-helper failure. Calls are never sent without the helper's
// headers, and the failure is not retried, since the helper already ran to completion.
type credentialError struct {
	err error
}

func (e *credentialError) Error() string { return e.err.Error() }
func (e *credentialError) Unwrap() error { return e.err }

// withHeaders returns ctx with the headers for a call of method attached.
func (a *callAuth) withHeaders(ctx context.Context, method string) (context.Context, error) {
	pairs := a.pairs
	if a.helper != nil {
		uri := a.helperURI(method)
		headers, err := a.helper.Get(ctx, uri)
		if err != nil {
			return nil, &credentialError{err: fmt.Errorf("credentials for %s: %w", uri, err)}
		}
		pairs = append([]string(nil), a.pairs...)
		for name, values := range headers {
			for _, value := range values {
				pairs = append(pairs, strings.ToLower(name), value)
			}
		}
	}

	if len(pairs) == 0 {
		return ctx, nil
	}
	return metadata.AppendToOutgoingContext(ctx, pairs...), nil
}

// helperURI returns the URI that Bazel gives the credential helper for a gRPC call:
// "https://<authority>/<full service name>", without ":443". Bazel wraps the helper in
// google-auth credentials, and grpc-java's GoogleAuthLibraryCallCredentials builds this
// service URI for every call, always with https, whatever the channel's scheme. Using the
// same URI lets one helper configuration serve Bazel and img alike.
func (a *callAuth) helperURI(method string) string {
	service := strings.TrimPrefix(method, "/")
	if i := strings.LastIndex(service, "/"); i >= 0 {
		service = service[:i]
	}
	host := strings.TrimSuffix(a.authority, ":443")
	return "https://" + host + "/" + service
}

func (a *callAuth) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx, err := a.withHeaders(ctx, method)
	if err != nil {
		return err
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (a *callAuth) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx, err := a.withHeaders(ctx, method)
	if err != nil {
		return nil, err
	}
	return streamer(ctx, desc, cc, method, opts...)
}
