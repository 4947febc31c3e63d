// react-admin's ra-data-simple-rest data provider, unmodified, against a running crmapi.
// Run by tests/test_react_admin.py: CRMAPI_URL (the API root, .../api), CRMAPI_TOKEN (an
// administrator's token) and CRMAPI_ORIGIN (a front-end origin the server allows) come from it.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fetchUtils } from 'ra-core';
import simpleRestProvider from 'ra-data-simple-rest';

const API = process.env.CRMAPI_URL;
const TOKEN = process.env.CRMAPI_TOKEN;
const ORIGIN = process.env.CRMAPI_ORIGIN;
assert.ok(API && TOKEN && ORIGIN, 'set CRMAPI_URL, CRMAPI_TOKEN and CRMAPI_ORIGIN');

// The httpClient every react-admin app writes: fetchJson plus the token. Node's fetch does no CORS,
// so the Origin a browser would send is added by hand and the CORS answer is checked explicitly.
const seen = [];
const httpClient = (url, options = {}) => {
  const headers = new Headers(options.headers || { Accept: 'application/json' });
  headers.set('Authorization', `Bearer ${TOKEN}`);
  headers.set('Origin', ORIGIN);
  return fetchUtils.fetchJson(url, { ...options, headers }).then((response) => {
    seen.push(response.headers);
    return response;
  });
};
const dataProvider = simpleRestProvider(API, httpClient);

const page = (page, perPage) => ({ page, perPage });

test('create, then getOne', async () => {
  const { data: company } = await dataProvider.create('companies', { data: { name: 'Initech', size: 50 } });
  assert.match(company.id, /^comp_/);
  assert.equal(company.name, 'Initech');
  const { data } = await dataProvider.getOne('companies', { id: company.id });
  assert.deepEqual(data, company);
});

test('getList pages with range and Content-Range, sorts and filters', async () => {
  const names = ['Ada', 'Grace', 'Linus', 'Margaret', 'Ken'];
  for (const first_name of names) {
    await dataProvider.create('contacts', { data: { first_name, status: first_name.length > 3 ? 'hot' : 'cold' } });
  }
  const first = await dataProvider.getList('contacts', {
    pagination: page(1, 2), sort: { field: 'first_name', order: 'ASC' }, filter: {},
  });
  assert.equal(first.total, 5);
  assert.deepEqual(first.data.map((c) => c.first_name), ['Ada', 'Grace']);
  const second = await dataProvider.getList('contacts', {
    pagination: page(2, 2), sort: { field: 'first_name', order: 'ASC' }, filter: {},
  });
  assert.deepEqual(second.data.map((c) => c.first_name), ['Ken', 'Linus']);
  const hot = await dataProvider.getList('contacts', {
    pagination: page(1, 10), sort: { field: 'first_name', order: 'DESC' }, filter: { status: 'hot' },
  });
  assert.deepEqual(hot.data.map((c) => c.first_name), ['Margaret', 'Linus', 'Grace']);
  assert.equal(hot.total, 3);
  const search = await dataProvider.getList('contacts', {
    pagination: page(1, 10), sort: { field: 'id', order: 'ASC' }, filter: { q: 'marg' },
  });
  assert.deepEqual(search.data.map((c) => c.first_name), ['Margaret']);
  const empty = await dataProvider.getList('contacts', {
    pagination: page(9, 10), sort: { field: 'id', order: 'ASC' }, filter: {},
  });
  assert.deepEqual(empty, { data: [], total: 5 });
});

test('getMany and getManyReference', async () => {
  const { data: company } = await dataProvider.create('companies', { data: { name: 'Hooli' } });
  const ids = [];
  for (const last_name of ['Bighead', 'Belson', 'Dunn']) {
    ids.push((await dataProvider.create('contacts', { data: { last_name, company_id: company.id } })).data.id);
  }
  const many = await dataProvider.getMany('contacts', { ids: [ids[0], ids[2]] });
  assert.deepEqual(many.data.map((c) => c.last_name).sort(), ['Bighead', 'Dunn']);
  const refs = await dataProvider.getManyReference('contacts', {
    target: 'company_id', id: company.id, pagination: page(1, 2), sort: { field: 'last_name', order: 'ASC' },
    filter: {},
  });
  assert.equal(refs.total, 3);
  assert.deepEqual(refs.data.map((c) => c.last_name), ['Belson', 'Bighead']);
});

test('update sends the whole record back; updateMany', async () => {
  const { data: deal } = await dataProvider.create('deals', { data: { name: 'Big one', amount: 1200.5 } });
  // react-admin's edit form sends every field, server-managed ones included: they are ignored.
  const { data: updated } = await dataProvider.update('deals', {
    id: deal.id, data: { ...deal, amount: 99.99, created_at: '2000-01-01T00:00:00Z' }, previousData: deal,
  });
  assert.equal(updated.amount, 99.99);
  assert.equal(updated.created_at, deal.created_at);
  const { data: other } = await dataProvider.create('deals', { data: { name: 'Small one' } });
  const { data: changed } = await dataProvider.updateMany('deals', { ids: [deal.id, other.id], data: { status: 'won' } });
  assert.deepEqual(changed, [deal.id, other.id]);
  const { data: both } = await dataProvider.getMany('deals', { ids: [deal.id, other.id] });
  assert.deepEqual(both.map((d) => d.status), ['won', 'won']);
});

test('delete and deleteMany (archive), getOne still reads archived records', async () => {
  const made = [];
  for (const name of ['One', 'Two', 'Three']) {
    made.push((await dataProvider.create('companies', { data: { name: `Gone ${name}` } })).data);
  }
  const { data: deleted } = await dataProvider.delete('companies', { id: made[0].id, previousData: made[0] });
  assert.equal(deleted.id, made[0].id);
  assert.ok(deleted.archived_at);
  const { data: ids } = await dataProvider.deleteMany('companies', { ids: [made[1].id, made[2].id] });
  assert.deepEqual(ids, [made[1].id, made[2].id]);
  const left = await dataProvider.getList('companies', {
    pagination: page(1, 50), sort: { field: 'name', order: 'ASC' }, filter: { q: 'Gone' },
  });
  assert.equal(left.total, 0);
  const { data: archived } = await dataProvider.getOne('companies', { id: made[2].id });
  assert.ok(archived.archived_at);
});

test('delete of a hard-deleted resource', async () => {
  const { data: tag } = await dataProvider.create('tags', { data: { name: 'temporary' } });
  await dataProvider.delete('tags', { id: tag.id, previousData: tag });
  await assert.rejects(dataProvider.getOne('tags', { id: tag.id }), (err) => err.status === 404);
});

test('errors reach react-admin as HttpError with the problem body and its message', async () => {
  await assert.rejects(dataProvider.getOne('contacts', { id: 'c_missing' }), (err) => {
    assert.equal(err.status, 404);
    assert.equal(err.body.status, 404);
    assert.equal(err.message, err.body.detail);
    return true;
  });
  await assert.rejects(
    dataProvider.getList('contacts', { pagination: page(1, 5), sort: { field: 'emial', order: 'ASC' }, filter: {} }),
    (err) => err.status === 400 && err.body.field === 'emial' && /emial/.test(err.message),
  );
  await assert.rejects(dataProvider.create('companies', { data: { size: 3 } }),
    (err) => err.status === 400 && err.body.field === 'name');
});

test('every answer carries the CORS headers for the allowed origin', async () => {
  assert.ok(seen.length > 20);
  for (const headers of seen) {
    assert.equal(headers.get('access-control-allow-origin'), ORIGIN);
    assert.match(headers.get('access-control-expose-headers'), /Content-Range/);
  }
});

test('errors carry the CORS headers too (a 401 is readable by the front end)', async () => {
  for (const [token, status] of [['wrong', 401], [TOKEN, 400]]) {
    const resp = await fetch(`${API}/contacts?range=[5,1]`, {
      headers: { Authorization: `Bearer ${token}`, Origin: ORIGIN },
    });
    assert.equal(resp.status, status);
    assert.equal(resp.headers.get('content-type'), 'application/problem+json');
    assert.equal(resp.headers.get('access-control-allow-origin'), ORIGIN);
    assert.match(resp.headers.get('access-control-expose-headers'), /Content-Range/);
  }
});

test('CORS preflight is answered for the headers react-admin sends', async () => {
  for (const method of ['GET', 'POST', 'PUT', 'DELETE']) {
    const resp = await fetch(`${API}/contacts/c_anything`, {
      method: 'OPTIONS',
      headers: {
        Origin: ORIGIN,
        'Access-Control-Request-Method': method,
        'Access-Control-Request-Headers': 'authorization,content-type,range',
      },
    });
    assert.ok(resp.status >= 200 && resp.status < 300, `preflight ${method}: ${resp.status}`);
    assert.equal(resp.headers.get('access-control-allow-origin'), ORIGIN);
    assert.match(resp.headers.get('access-control-allow-methods'), new RegExp(`\\b${method}\\b`));
    const allowed = resp.headers.get('access-control-allow-headers').toLowerCase();
    for (const header of ['authorization', 'content-type', 'range']) {
      assert.ok(allowed.includes(header), `${header} not in ${allowed}`);
    }
  }
});

test('a preflight from an origin that is not allowed gets no CORS grant', async () => {
  const resp = await fetch(`${API}/contacts`, {
    method: 'OPTIONS',
    headers: { Origin: 'http://evil.invalid', 'Access-Control-Request-Method': 'GET' },
  });
  assert.equal(resp.headers.get('access-control-allow-origin'), null);
});
