package launch

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Signature is the CPUID signature of a processor (CPUID Fn0000_0001 EAX) from its family, model and stepping
// (AMD CPUID Specification, publication 25481): families above 0xF are stored as 0xF plus an extended
// family, models as a low and an extended nibble.
func Signature(family, model, stepping uint8) uint32 {
	baseFamily, extFamily := uint32(family), uint32(0)
	if family > 0xf {
		baseFamily, extFamily = 0xf, uint32(family-0xf)
	}
	return extFamily<<20 | uint32(model>>4)<<16 | baseFamily<<8 | uint32(model&0xf)<<4 | uint32(stepping&0xf)
}

type fms struct{ family, model, stepping uint8 }

// vcpuTypes are QEMU's AMD EPYC CPU models (target/i386/cpu.c, builtin_x86_defs) and their family, model
// and stepping: QEMU puts the signature into every VMSA.
var vcpuTypes = map[string]fms{
	"EPYC":          {23, 1, 2},
	"EPYC-v1":       {23, 1, 2},
	"EPYC-v2":       {23, 1, 2},
	"EPYC-IBPB":     {23, 1, 2},
	"EPYC-v3":       {23, 1, 2},
	"EPYC-v4":       {23, 1, 2},
	"EPYC-Rome":     {23, 49, 0},
	"EPYC-Rome-v1":  {23, 49, 0},
	"EPYC-Rome-v2":  {23, 49, 0},
	"EPYC-Rome-v3":  {23, 49, 0},
	"EPYC-Milan":    {25, 1, 1},
	"EPYC-Milan-v1": {25, 1, 1},
	"EPYC-Milan-v2": {25, 1, 1},
	"EPYC-Genoa":    {25, 17, 0},
	"EPYC-Genoa-v1": {25, 17, 0},
	"EPYC-Turin":    {26, 0, 0},
}

// VCPUTypes lists the QEMU CPU models whose signature this package knows, sorted.
func VCPUTypes() []string { return slices.Sorted(maps.Keys(vcpuTypes)) }

// VCPUSignature returns the CPUID signature of the QEMU CPU model name. A model it does not know is an
// error: the measurement depends on the signature, and "host" or another model would make it the host's
// choice.
func VCPUSignature(name string) (uint32, error) {
	t, ok := vcpuTypes[name]
	if !ok {
		return 0, fmt.Errorf("vCPU type %q is not known; the launch measurement depends on the vCPU's family, model and stepping: use one of %s", name, strings.Join(VCPUTypes(), ", "))
	}
	return Signature(t.family, t.model, t.stepping), nil
}
