package registry

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/rulesimg/img/registry/metadata"
)

// getReferrers lists the manifests whose subject is the given digest as an OCI index, filtered
// by ?artifactType= when given. A subject with no referrers (or no manifest at all) gets an
// empty list, as the spec requires.
func (s *Server) getReferrers(w http.ResponseWriter, r *http.Request, name, reference string) {
	subject, err := parseDigest(reference)
	if err != nil {
		writeError(w, r, err)
		return
	}
	requestInfoFrom(r).digest = subject.String()

	referrers, err := s.metadata.Referrers(r.Context(), name, subject)
	if err != nil {
		writeError(w, r, err)
		return
	}

	if artifactType := r.URL.Query().Get("artifactType"); artifactType != "" {
		filtered := []metadata.Descriptor{}
		for _, referrer := range referrers {
			if referrer.ArtifactType == artifactType {
				filtered = append(filtered, referrer)
			}
		}
		referrers = filtered
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}

	content, _ := json.Marshal(struct {
		SchemaVersion int                   `json:"schemaVersion"`
		MediaType     string                `json:"mediaType"`
		Manifests     []metadata.Descriptor `json:"manifests"`
	}{2, mediaTypeOCIIndex, referrers})
	w.Header().Set("Content-Type", mediaTypeOCIIndex)
	w.Header().Set("Content-Length", strconv.Itoa(len(content)))
	w.WriteHeader(http.StatusOK)
	w.Write(content)
}
