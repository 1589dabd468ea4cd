r"""A screenshot of the export page with a digit drawn on it, as in docs/export.md.

  python -m convnet.export --workdir=runs/mnist_5k --format=tfjs --out=runs/mnist_5k/tfjs --page
  python scripts/page_screenshot.py --page=runs/mnist_5k/tfjs --out=docs/export_page.png

Serves the page, loads it in headless Chromium (see `convnet.web.browse`),
draws a "7" with the mouse and saves the whole page as a PNG.
"""

from absl import app, flags

from convnet import cli, web
from convnet.errors import ConvnetError


def main(argv):
  cli.start(argv, compilation_cache=False)
  try:
    with web.browse(FLAGS.page) as page:
      _, probabilities = web.draw(page)
      page.screenshot(path=FLAGS.out, full_page=True)
  except ConvnetError as e:
    raise SystemExit(f"error: {e}") from None
  best = int(probabilities.argmax())
  print(f"Wrote {FLAGS.out}: the drawing read as class {best} ({probabilities[best]:.1%})")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  cli.define(
    FLAGS,
    (
      ("string", "page", None, "A folder the export wrote with --page."),
      ("string", "out", None, "The PNG to write."),
    ),
    required=("page", "out"),
  )
  app.run(main, flags_parser=cli.parse_flags)
