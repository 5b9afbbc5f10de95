from cbir.cli import main

raise SystemExit(main())
