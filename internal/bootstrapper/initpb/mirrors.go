package initpb

import "github.com/constellation-dev/constellation/internal/registrymirror"

// MirrorsToProto converts a registry mirror list into its message form (registrymirror.FromWire reads it).
func MirrorsToProto(ms []registrymirror.Mirror) []*RegistryMirror {
	out := make([]*RegistryMirror, 0, len(ms))
	for _, m := range ms {
		out = append(out, &RegistryMirror{Registry: m.Registry, Endpoints: append([]string(nil), m.Endpoints...)})
	}
	return out
}

// CredentialsToProto converts registry credentials into their message form (registrymirror.CredentialsFromWire
// reads it). The messages hold secrets: never log them.
func CredentialsToProto(cs []registrymirror.Credentials) []*RegistryCredentials {
	out := make([]*RegistryCredentials, 0, len(cs))
	for _, c := range cs {
		out = append(out, &RegistryCredentials{Registry: c.Registry, Username: c.Username, Password: c.Password, Token: c.Token})
	}
	return out
}
