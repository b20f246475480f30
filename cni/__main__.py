import sys

from cni.main import main

sys.exit(main())
