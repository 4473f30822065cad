package registry

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/rulesimg/img/registry/blobstore"
)

// Routes of the /v2/ API. A repository name may contain slashes, so a path is matched from its
// end: the last segments pick the resource and everything between /v2/ and them is the name.
//
//	GET                  /v2/                                  base
//	GET                  /v2/_catalog                          catalog
//	GET                  /v2/<name>/tags/list                  tags
//	GET HEAD PUT DELETE  /v2/<name>/manifests/<reference>      manifest
//	GET HEAD DELETE      /v2/<name>/blobs/<digest>             blob
//	POST                 /v2/<name>/blobs/uploads/             upload start
//	GET PATCH PUT DELETE /v2/<name>/blobs/uploads/<session id> upload
//	GET                  /v2/<name>/referrers/<digest>         referrers
type routeHandler func(s *Server, w http.ResponseWriter, r *http.Request, name, reference string)

type route struct {
	// label names the route in logs and metrics.
	label string
	// suffix are the path segments after the name; "*" matches one segment, the reference.
	suffix  []string
	methods map[string]routeHandler
}

var routes = []route{
	{"tags", []string{"tags", "list"}, map[string]routeHandler{
		http.MethodGet: (*Server).getTags,
	}},
	{"manifest", []string{"manifests", "*"}, map[string]routeHandler{
		http.MethodGet:    (*Server).getManifest,
		http.MethodHead:   (*Server).getManifest,
		http.MethodPut:    (*Server).putManifest,
		http.MethodDelete: (*Server).deleteManifest,
	}},
	{"upload_start", []string{"blobs", "uploads", ""}, map[string]routeHandler{
		http.MethodPost: (*Server).startUpload,
	}},
	{"upload", []string{"blobs", "uploads", "*"}, map[string]routeHandler{
		http.MethodGet:    (*Server).getUpload,
		http.MethodPatch:  (*Server).patchUpload,
		http.MethodPut:    (*Server).putUpload,
		http.MethodDelete: (*Server).cancelUpload,
	}},
	{"blob", []string{"blobs", "*"}, map[string]routeHandler{
		http.MethodGet:    (*Server).getBlob,
		http.MethodHead:   (*Server).getBlob,
		http.MethodDelete: (*Server).deleteBlob,
	}},
	{"referrers", []string{"referrers", "*"}, map[string]routeHandler{
		http.MethodGet: (*Server).getReferrers,
	}},
}

// namePattern is the repository name grammar of the distribution spec.
var namePattern = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)

// tagPattern is the tag grammar of the distribution spec.
var tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// maxNameLength bounds a repository name. The distribution spec notes that many clients limit
// <host>/<name> to 255 characters, so a longer name could not be pulled by them anyway.
const maxNameLength = 255

func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	info := requestInfoFrom(r)
	path := r.URL.Path

	switch path {
	case "/v2", "/v2/":
		info.route = "base"
		s.getBase(w, r)
		return
	case "/v2/_catalog":
		info.route = "catalog"
		s.getCatalog(w, r)
		return
	}

	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		info.route = "none"
		http.NotFound(w, r)
		return
	}
	segments := strings.Split(rest, "/")

	for _, rt := range routes {
		name, reference, ok := matchSuffix(segments, rt.suffix)
		if !ok {
			continue
		}
		info.route = rt.label
		info.repository = name

		handler, ok := rt.methods[r.Method]
		if !ok {
			writeError(w, r, newError(codeUnsupported, "method %s is not supported on %s", r.Method, path))
			return
		}
		if len(name) > maxNameLength || !namePattern.MatchString(name) {
			writeError(w, r, newError(codeNameInvalid, "repository name %q does not match the distribution spec's name grammar", name))
			return
		}
		r = r.WithContext(blobstore.WithRepository(r.Context(), name))
		handler(s, w, r, name, reference)
		return
	}

	info.route = "none"
	writeError(w, r, newError(codeUnsupported, "no registry API at %s", path))
}

// matchSuffix matches the last segments against suffix and returns the name before them and the
// segment matched by "*".
func matchSuffix(segments, suffix []string) (name, reference string, ok bool) {
	if len(segments) <= len(suffix) {
		return "", "", false
	}
	tail := segments[len(segments)-len(suffix):]
	for i, want := range suffix {
		switch {
		case want == "*":
			if tail[i] == "" {
				return "", "", false
			}
			reference = tail[i]
		case tail[i] != want:
			return "", "", false
		}
	}
	name = strings.Join(segments[:len(segments)-len(suffix)], "/")
	return name, reference, true
}

func (s *Server) getBase(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(w, r, newError(codeUnsupported, "method %s is not supported on /v2/", r.Method))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write([]byte("{}"))
	}
}
