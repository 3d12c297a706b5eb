package initpb

import "github.com/constellation-dev/constellation/internal/registrymirror"

// MirrorsToProto converts a registry mirror list into its message form.
func MirrorsToProto(ms []registrymirror.Mirror) []*RegistryMirror {
	out := make([]*RegistryMirror, 0, len(ms))
	for _, m := range ms {
		out = append(out, &RegistryMirror{Registry: m.Registry, Endpoints: append([]string(nil), m.Endpoints...)})
	}
	return out
}

// MirrorsFromProto converts registry mirrors from a message and validates them: a list that is not valid is an
// error, never rendered.
func MirrorsFromProto(pb []*RegistryMirror) ([]registrymirror.Mirror, error) {
	var ms []registrymirror.Mirror
	for _, m := range pb {
		ms = append(ms, registrymirror.Mirror{Registry: m.GetRegistry(), Endpoints: append([]string(nil), m.GetEndpoints()...)})
	}
	if err := registrymirror.Validate(ms); err != nil {
		return nil, err
	}
	return ms, nil
}
