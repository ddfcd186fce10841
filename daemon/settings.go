package daemon

import (
	"reflect"
	"strings"
)

// setting is one leaf of Config with the name of the flag it comes from.
type setting struct {
	name  string
	value reflect.Value
}

// settings lists every setting of cfg, in field order, walking nested
// structs; fields tagged "-" are left out.
func settings(cfg *Config) []setting {
	var out []setting
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			f, tag := t.Field(i), t.Field(i).Tag.Get("setting")
			switch {
			case tag == "-":
			case tag == "" && f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath():
				walk(v.Field(i)) // TURN, Link, Privacy
			case tag == "":
				// A field someone forgot to tag still counts: its change
				// needs a restart (TestEverySettingIsAFlag names it).
				out = append(out, setting{name: f.Name, value: v.Field(i)})
			default:
				out = append(out, setting{name: tag, value: v.Field(i)})
			}
		}
	}
	walk(reflect.ValueOf(cfg).Elem())
	return out
}

// SettingNames returns the name of every setting in Config, as the flags
// and config keys are named.
func SettingNames() []string {
	var names []string
	for _, s := range settings(&Config{}) {
		names = append(names, s.name)
	}
	return names
}

// changed lists the settings whose values differ between a and b. Zones
// compare without their trailing dot.
func changed(a, b *Config) []string {
	sa, sb := settings(a), settings(b)
	var out []string
	for i := range sa {
		va, vb := sa[i].value.Interface(), sb[i].value.Interface()
		if s, ok := va.(string); ok && sa[i].name == "zone" {
			va, vb = strings.TrimSuffix(s, "."), strings.TrimSuffix(vb.(string), ".")
		}
		if !reflect.DeepEqual(va, vb) {
			out = append(out, sa[i].name)
		}
	}
	return out
}
