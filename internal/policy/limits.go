package policy

// MaxDesiredSize bounds the encoded size (proto.Size) of a DesiredConfig: the
// controller refuses a group whose hosts would receive more, and the agent
// refuses more from the controller or its state file. A valid policy is a
// few kilobytes at most (32 rules, 32 gateways).
const MaxDesiredSize = 256 << 10
