from hpr.cli import main

raise SystemExit(main())
