"""The comparison report: results trees -> reports/<name>/{index.html, report.md, *.csv, figures/, llmd/}."""
