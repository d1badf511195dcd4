from bnjax.cli import main

raise SystemExit(main())
