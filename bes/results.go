package bes

import (
	"encoding/json"
	"html/template"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// InvocationResults is the JSON document of /api/invocation/<id>.
type InvocationResults struct {
	InvocationID string         `json:"invocation_id"`
	Invocation   InvocationInfo `json:"invocation"`
	// Done is true when every push of the invocation is final.
	Done   bool         `json:"done"`
	Pushes []PushStatus `json:"pushes"`
}

// PushStatus is one push of an invocation, as the results page and API show it.
type PushStatus struct {
	Target     string    `json:"target"`
	Request    string    `json:"request,omitempty"`
	Strategy   string    `json:"strategy,omitempty"`
	References []string  `json:"references,omitempty"`
	Digest     string    `json:"digest,omitempty"`
	State      State     `json:"state"`
	Error      string    `json:"error,omitempty"`
	Attempts   int       `json:"attempts"`
	Created    time.Time `json:"created"`
	Started    time.Time `json:"started,omitzero"`
	Finished   time.Time `json:"finished,omitzero"`
	// NextAttempt is when a push that failed with a transient error runs again.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// DurationSeconds is from the first attempt's start to the final state.
	DurationSeconds float64 `json:"duration_seconds,omitempty"`
}

// Handler serves the results page /invocation/<id>, the JSON API /api/invocation/<id>,
// Prometheus metrics from gatherer on /metrics, and /healthz.
func (s *Server) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /invocation/{id}", s.serveResultsPage)
	mux.HandleFunc("GET /api/invocation/{id}", s.serveResultsJSON)
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	return mux
}

// Results returns the pushes of an invocation. An invocation without pushes, known or
// not, has an empty list, because Bazel links the page before any push exists.
func (s *Server) Results(invocationID string) (InvocationResults, error) {
	jobs, err := s.queue.Jobs(invocationID)
	if err != nil {
		return InvocationResults{}, err
	}

	// While the build still streams events, more pushes can come.
	info, streaming := s.invocationInfo(invocationID)
	results := InvocationResults{
		InvocationID: invocationID,
		Invocation:   info,
		Done:         allFinal(jobs) && !(streaming && !info.Finished),
		Pushes:       make([]PushStatus, 0, len(jobs)),
	}
	for _, job := range jobs {
		push := PushStatus{
			Target:      job.Label,
			Request:     job.RequestName,
			Strategy:    job.Strategy,
			References:  job.References,
			Digest:      job.Digest,
			State:       job.State,
			Error:       job.Error,
			Attempts:    job.Attempts,
			Created:     job.CreatedAt,
			Started:     job.StartedAt,
			Finished:    job.FinishedAt,
			NextAttempt: job.NextAttempt,
		}
		if !job.StartedAt.IsZero() && !job.FinishedAt.IsZero() {
			push.DurationSeconds = job.FinishedAt.Sub(job.StartedAt).Seconds()
		}
		results.Pushes = append(results.Pushes, push)
	}
	return results, nil
}

func (s *Server) serveResultsJSON(w http.ResponseWriter, r *http.Request) {
	results, err := s.Results(r.PathValue("id"))
	if err != nil {
		s.serveError(w, r, err)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	encoder := json.NewEncoder(w)
	encoder.SetIndent("", "  ")
	encoder.Encode(results)
}

func (s *Server) serveResultsPage(w http.ResponseWriter, r *http.Request) {
	results, err := s.Results(r.PathValue("id"))
	if err != nil {
		s.serveError(w, r, err)
		return
	}

	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := resultsPage.Execute(w, results); err != nil {
		s.log.Warn("writing the results page failed", "invocation_id", results.InvocationID, "error", err)
	}
}

func (s *Server) serveError(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("reading push jobs for the results page failed", "path", r.URL.Path, slog.Any("error", err))
	http.Error(w, "reading push jobs failed: "+err.Error(), http.StatusInternalServerError)
}

var resultsPage = template.Must(template.New("results").Funcs(template.FuncMap{
	"timestamp": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format(time.RFC3339)
	},
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>img bes: invocation {{.InvocationID}}</title>
{{if not .Done}}<meta http-equiv="refresh" content="2">{{end}}
<style>
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.succeeded { color: #060; } .failed { color: #a00; } .skipped { color: #666; }
code { font-size: 0.9em; }
</style>
</head>
<body>
<h1>Invocation <code>{{.InvocationID}}</code></h1>
{{with .Invocation}}{{if .Command}}<p>bazel {{.Command}}{{if .BazelVersion}} ({{.BazelVersion}}){{end}}{{if .Finished}}, finished: {{.ExitCode}}{{end}}</p>{{end}}{{end}}
{{if .Pushes}}
<table>
<tr><th>target</th><th>state</th><th>references</th><th>digest</th><th>attempts</th><th>started</th><th>finished</th><th>seconds</th><th>error</th></tr>
{{range .Pushes}}
<tr>
<td><code>{{.Target}}</code></td>
<td class="{{.State}}">{{.State}}{{if eq .State "skipped"}} (strategy {{.Strategy}}){{end}}{{with .NextAttempt}}, retry at {{timestamp .}}{{end}}</td>
<td>{{range .References}}<code>{{.}}</code><br>{{end}}</td>
<td>{{with .Digest}}<code>{{.}}</code>{{end}}</td>
<td>{{.Attempts}}</td>
<td>{{timestamp .Started}}</td>
<td>{{timestamp .Finished}}</td>
<td>{{if .DurationSeconds}}{{printf "%.2f" .DurationSeconds}}{{end}}</td>
<td>{{.Error}}</td>
</tr>
{{end}}
</table>
{{else}}
<p>No pushes for this invocation yet. The page refreshes while pushes are unfinished.</p>
{{end}}
</body>
</html>
`))
