from lram.cli import main

raise SystemExit(main())
