// Package faultproxy puts a loopback proxy between a client under test and a real peer, so
// tests can inject the faults that real networks and registries produce. These are error
// statuses with Retry-After, slow responses, connections reset in the middle of an upload,
// and gRPC streams cut after a number of bytes in either direction. Proxy is an HTTP reverse
// proxy with rules that can be added while requests flow and a log of every request. TCP
// forwards raw bytes and can cut a connection once.
//
// TestResetAfterPATCH checks what the CNCF distribution registry v3.1.2 keeps after a reset.
// When ResetAfter cuts a blob upload PATCH, the registry logs "client disconnected during blob
// PATCH" with status 499. It keeps exactly the bytes it received in the upload session, which
// stays open. A GET on the session URL then reports them in its Range header and returns a
// new Location. The Location from before the cut is stale, because distribution stores the
// offset in its _state parameter, so a PATCH to it fails with 416. A client resumes by
// sending GET to the session and continuing at the returned Location and Range, or it starts
// a new session.
package faultproxy
