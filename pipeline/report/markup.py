"""Building blocks of a self-contained HTML page: escaped text, tables, inline PNGs.

Every value that came from data or files (titles, ids, paths, config values) goes
through `escape`; only markup built here is `Raw`. Images are data URIs, so the
page makes no request and works opened from disk or sent by e-mail.
"""

import base64
import html
from pathlib import Path

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.note { color: #666; } .figures img { max-width: 48%; margin: 0 1% 1em 0; border: 1px solid #eee; }
.errors { display: grid; grid-template-columns: repeat(auto-fill, minmax(14em, 1fr)); gap: 0.8em; }
.error { border: 1px solid #ddd; padding: 0.5em; font-size: 0.9em; overflow-wrap: anywhere; }
.error img { width: 96px; height: 96px; display: block; margin-bottom: 0.3em; }
.scroll { overflow-x: auto; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""
TEXT_CLASS = ' class="text"'
NOTE_CLASS = ' class="note"'


class Raw(str):
    """Markup built by this package: inserted as it is, never escaped again."""


def escape(value):
    return value if isinstance(value, Raw) else Raw(html.escape(str(value), quote=True))


def fmt(value, digits=4):
    """A number for a table cell; None (an undefined metric) shows as a dash."""
    if isinstance(value, Raw):
        return value
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header, rows, table_id=None, text_columns=1):
    """A table whose first `text_columns` columns are left-aligned text; cells are escaped unless `Raw`."""
    def cells(values, tag):
        return "".join(f"<{tag}{TEXT_CLASS if i < text_columns else ''}>{escape(fmt(v))}</{tag}>"
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    attribute = f' id="{escape(table_id)}"' if table_id else ""
    return Raw(f'<div class="scroll"><table{attribute}><thead><tr>{cells(header, "th")}</tr></thead>'
               f"<tbody>{body}</tbody></table></div>")


def png_data_uri(data):
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image(path, alt, root=None):
    """An <img> holding the PNG at `path`, or an empty string when there is none, or when `path` (or a
    symlink on the way) leads out of folder `root` (default: the folder holding it): a shared page
    never carries the bytes of a file its run folder does not own."""
    path = Path(path)
    if not path.is_file() or not path.resolve().is_relative_to(Path(root or path.parent).resolve()):
        return Raw("")
    return Raw(f'<img src="{png_data_uri(path.read_bytes())}" alt="{escape(alt)}">')


def section(title, body, section_id):
    return Raw(f'<section id="{escape(section_id)}"><h2>{escape(title)}</h2>{body}</section>')


def paragraph(text, note=False):
    return Raw(f"<p{NOTE_CLASS if note else ''}>{escape(text)}</p>")


PAGE_START = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>"  # how `report` knows its pages


def page(title, subtitle, sections):
    return (
        PAGE_START + f"{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{paragraph(subtitle, note=True)}{''.join(sections)}</body></html>\n"
    )
