"""What kproto reports, after the analysis (rig/analysis) has compared the tests.

model.py     Report: the `kproto test` report and its JSON codec (report.json, docs/design.md §4)
terminal.py  the text outputs: the report (render) and run-tests' table (format_table)
html.py      the report as a page (templates/report.html.j2)
junit.py     THE JUnit writer (Case, to_xml) and to_junit for compared tests
ktap.py      compared tests as KTAP v1
"""
