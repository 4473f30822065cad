package registry

import "net/http"

// getCatalog lists repository names in lexical order, paginated with n and last.
func (s *Server) getCatalog(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, r, newError(codeUnsupported, "method %s is not supported on /v2/_catalog", r.Method))
		return
	}
	n, last, err := parsePage(r)
	if err != nil {
		writeError(w, r, err)
		return
	}

	repositories := []string{}
	if n != 0 {
		repositories, err = s.metadata.Repositories(r.Context(), last, n)
		if err != nil {
			writeError(w, r, err)
			return
		}
	}

	writePage(w, r, n, repositories, struct {
		Repositories []string `json:"repositories"`
	}{repositories})
}
