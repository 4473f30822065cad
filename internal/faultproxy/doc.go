// Package faultproxy puts a loopback proxy between a client under test and a real peer, so
// tests can inject the faults that real networks and registries produce. These are error
// statuses with Retry-After, connections reset in the middle of an upload, and gRPC streams
// cut after a number of bytes. Proxy is an HTTP reverse proxy with rules that can be added while requests
// flow and a log of every request. TCP forwards raw bytes and can cut a connection once.
//
// What the upstream keeps after a reset, checked by TestResetAfterPATCH against the CNCF
// distribution registry v3.1.2: when ResetAfter cuts a blob upload PATCH, the registry logs
// "client disconnected during blob PATCH" with status 499 and keeps exactly the bytes it
// received in the upload session, which stays open. A GET on the session URL then reports
// them in its Range header and returns a new Location. The Location from before the cut is
// stale, because distribution stores the offset in its _state parameter: a PATCH to it fails
// with 416. So a client resumes by GETting the session and continuing at the returned
// Location and Range, or starts a new session.
package faultproxy
