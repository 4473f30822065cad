package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/rulesimg/img/registry/metadata"
)

// parsePage reads the n and last parameters of a paginated list; n is -1 when absent.
func parsePage(r *http.Request) (n int, last string, err error) {
	query := r.URL.Query()
	last = query.Get("last")
	n = -1
	if value := query.Get("n"); value != "" {
		n, err = strconv.Atoi(value)
		if err != nil || n < 0 {
			return 0, "", newError(codeUnsupported, "invalid n=%q; send a non-negative number", value)
		}
	}
	return n, last, nil
}

// writePage sends a list as JSON with a Link header to the next page when the list was cut at n.
func writePage(w http.ResponseWriter, r *http.Request, n int, items []string, body any) {
	if n > 0 && len(items) == n {
		next := url.Values{"n": {strconv.Itoa(n)}, "last": {items[len(items)-1]}}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
	}
	content, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(content)))
	w.WriteHeader(http.StatusOK)
	w.Write(content)
}

// getTags lists a repository's tags in lexical order, paginated with n and last.
func (s *Server) getTags(w http.ResponseWriter, r *http.Request, name, _ string) {
	n, last, err := parsePage(r)
	if err != nil {
		writeError(w, r, err)
		return
	}

	tags := []string{}
	if n != 0 {
		tags, err = s.metadata.Tags(r.Context(), name, last, n)
		if errors.Is(err, metadata.ErrRepositoryUnknown) {
			writeError(w, r, wrapError(codeNameUnknown, err))
			return
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
	}

	writePage(w, r, n, tags, struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, tags})
}
