package joinpb

import "github.com/constellation-dev/constellation/internal/registrymirror"

// MirrorsToProto converts a registry mirror list into its message form (registrymirror.FromWire reads it).
func MirrorsToProto(ms []registrymirror.Mirror) []*RegistryMirror {
	out := make([]*RegistryMirror, 0, len(ms))
	for _, m := range ms {
		out = append(out, &RegistryMirror{Registry: m.Registry, Endpoints: append([]string(nil), m.Endpoints...)})
	}
	return out
}
