"""`python -m genrecon.report [REPORT_DIR]`: render the report in headless Chromium and list
what is broken (exit 1 when anything is). See genrecon.report.pagecheck."""

from genrecon.report.pagecheck import main

raise SystemExit(main())
