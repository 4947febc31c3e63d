"""floor_static.py - framework + server floor: Falcon returning a fixed 25-record contacts page.

Every GET (any path) answers 200 with the same 25 records shaped like crmapi's contacts (every
column but organization_id, tags as a JSON array), encoded per request by Falcon's JSON media
handler with orjson (as crmapi does), plus a Content-Range header. No database, no parsing:
the ceiling for "Falcon + gunicorn" on this machine. POST/PUT answer the first record.

    gunicorn -w 2 -k gthread --threads 4 --keep-alive 5 -b 127.0.0.1:18020 \
        --chdir bench/floors floor_static:app
"""

import falcon
import falcon.media
import orjson

RECORDS = [
    {
        'id': f'c_0{i:025d}',
        'first_name': 'Ada',
        'last_name': f'Lovelace{i}',
        'email': f'ada.lovelace{i}@bigbench.example',
        'phone': '+1-555-0100',
        'title': 'Engineer',
        'status': 'warm',
        'city': 'London',
        'company_id': 'comp_004eba7zkbayj674zmx43zc953',
        'linkedin_url': None,
        'background': None,
        'tags': ['tag_000696rjv5g6x1y0pa2a3ns7ne'],
        'created_at': '2023-04-05T06:07:08.123000Z',
        'updated_at': '2024-01-02T03:04:05.456000Z',
        'archived_at': None,
    }
    for i in range(1, 26)
]


class Static:
    def on_get(self, req, resp, **_):
        resp.media = RECORDS
        resp.set_header('Content-Range', 'contacts 0-24/100000')

    def on_post(self, req, resp, **_):
        req.bounded_stream.read()
        resp.status = 201
        resp.media = RECORDS[0]

    on_put = on_post


def create_app():
    app = falcon.App()
    handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
    static = Static()
    app.add_sink(lambda req, resp, **kw: getattr(static, 'on_' + req.method.lower(), static.on_get)(req, resp), '/')
    return app


app = create_app()
