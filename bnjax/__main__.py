from bnjax.run.cli import main

raise SystemExit(main())
