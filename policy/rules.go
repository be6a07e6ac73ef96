package policy

// RuleNames returns the FILE:LINE of every rule that can decide a request,
// in file order: the sockd.conf lines, then the routing file's. They are
// the values Decision.Rule and Route.Rule take (besides "" for the
// default), for counting matches per rule.
func (rs *Ruleset) RuleNames() []string {
	names := make([]string, 0, len(rs.rules))
	for i := range rs.rules {
		names = append(names, rs.rules[i].pos)
	}
	if rs.routes != nil {
		for i := range rs.routes.rules {
			names = append(names, rs.routes.rules[i].route.Rule)
		}
	}
	return names
}
