package initpb

// Port is the port of the Init service on the first control-plane node.
const Port = 9000

// InitSecretSize is the size of a cluster's init secret: random bytes the CLI generates when it creates the
// nodes and sends with Init and Recover (InitRequest.init_secret). A node knows only its SHA-256, from its
// instance metadata.
const InitSecretSize = 32
