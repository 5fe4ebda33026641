package store

// SetAuditSampling makes AuditSize sum logs of up to exact events exactly
// and sample larger ones in windows runs of run events, until the returned
// func restores the defaults.
func SetAuditSampling(exact, windows, run uint64) (restore func()) {
	e, w, r := auditExactEvents, auditSampleWindows, auditSampleRun
	auditExactEvents, auditSampleWindows, auditSampleRun = exact, windows, run
	return func() { auditExactEvents, auditSampleWindows, auditSampleRun = e, w, r }
}
