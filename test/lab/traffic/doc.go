// Package traffic sends and verifies bulk transfers over Multipath TCP, for
// the lab's data-path tests and figures.
//
// A sender ([Dial], [Send]) writes a header (magic, seed, length) and then
// the deterministic pseudo-random [Stream] of the seed; the receiver
// ([Listen], [Serve], [Receive]) checks every byte against the same stream
// with a [Verifier], measures throughput and the longest stall between reads
// that brought data, and sends its [Report] back as one line of JSON.
//
// To run either end inside a lab namespace from Go, create the listener or
// the connection inside nstest.Do (or lab.Lab.Do): a socket made while the
// locked thread is in a namespace stays in it, and Serve and Send then run
// on any goroutine.
package traffic
