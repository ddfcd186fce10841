package connlog

import (
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"filippo.io/age"
)

// StatsOptions select what Summarize reads and shows.
type StatsOptions struct {
	// From and To bound the days read (inclusive); zero means unbounded.
	From, To time.Time
	// Identities decrypt .age files; encrypted files are an error without them.
	Identities []age.Identity
	// ByDevice adds per-device counts. Off by default: the report then holds
	// no device name and no address.
	ByDevice bool
}

// Stats is an aggregate over connection logs: counts only. Its JSON (logs
// stats --json) has the same fields as the text report, in snake case.
type Stats struct {
	Rows     []StatsRow     `json:"rows"`
	Networks map[string]int `json:"distinct_networks"` // day -> distinct masked client networks
	Devices  map[string]int `json:"devices,omitempty"` // device -> events (only with ByDevice)
}

// StatsRow aggregates one service on one day.
type StatsRow struct {
	Day      string         `json:"day"`
	Service  string         `json:"service"`
	Events   int            `json:"events"`
	Outcomes map[string]int `json:"outcomes"`
	BytesIn  int64          `json:"bytes_in"`
	BytesOut int64          `json:"bytes_out"`
}

// Summarize reads every log file in dir within the options' days.
func Summarize(dir string, o StatsOptions) (Stats, error) {
	files, err := datedFiles(dir, filePrefix)
	if err != nil {
		return Stats{}, err
	}
	rows := map[[2]string]*StatsRow{}
	nets := map[string]map[string]bool{}
	st := Stats{Networks: map[string]int{}}
	if o.ByDevice {
		st.Devices = map[string]int{}
	}
	for _, f := range files {
		if (!o.From.IsZero() && f.day.Before(o.From)) || (!o.To.IsZero() && f.day.After(o.To)) {
			continue
		}
		err := ReadFile(filepath.Join(dir, f.name), o.Identities, func(r Record) error {
			day := r.Time.UTC().Format(dayLayout)
			k := [2]string{day, r.Service}
			row := rows[k]
			if row == nil {
				row = &StatsRow{Day: day, Service: r.Service, Outcomes: map[string]int{}}
				rows[k] = row
			}
			row.Events++
			row.Outcomes[cmpOrDash(r.Outcome)]++
			row.BytesIn += r.BytesIn
			row.BytesOut += r.BytesOut
			if r.Client != "" {
				if nets[day] == nil {
					nets[day] = map[string]bool{}
				}
				nets[day][r.Client] = true
			}
			if o.ByDevice && r.Device != "" {
				st.Devices[r.Device]++
			}
			return nil
		})
		if err != nil {
			return Stats{}, err
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(rows), func(a, b [2]string) int {
		return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1])
	}) {
		st.Rows = append(st.Rows, *rows[k])
	}
	for day, set := range nets {
		st.Networks[day] = len(set)
	}
	return st, nil
}

func cmpOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteText prints the report as aligned tables.
func (s Stats) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DAY\tSERVICE\tEVENTS\tOUTCOMES\tBYTES_IN\tBYTES_OUT")
	for _, r := range s.Rows {
		var outs []string
		for _, k := range slices.Sorted(maps.Keys(r.Outcomes)) {
			outs = append(outs, fmt.Sprintf("%s=%d", k, r.Outcomes[k]))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\n", r.Day, r.Service, r.Events, strings.Join(outs, " "), r.BytesIn, r.BytesOut)
	}
	fmt.Fprintln(tw, "\nDAY\tDISTINCT_NETWORKS")
	for _, day := range slices.Sorted(maps.Keys(s.Networks)) {
		fmt.Fprintf(tw, "%s\t%d\n", day, s.Networks[day])
	}
	if s.Devices != nil {
		fmt.Fprintln(tw, "\nDEVICE\tEVENTS")
		for _, d := range slices.Sorted(maps.Keys(s.Devices)) {
			fmt.Fprintf(tw, "%s\t%d\n", d, s.Devices[d])
		}
	}
	return tw.Flush()
}
