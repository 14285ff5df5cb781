import sys

from keras_steps._cli import main

sys.exit(main())
