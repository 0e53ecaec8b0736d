-- Three customers' worth of pagila rows, different per tenant and the same on every run:
-- %(k)s is the tenant's number (1, 2, 3); counts, names, dates and amounts all depend on it.
-- pagila's own data files are not available here; these rows exercise what its schema has:
-- enums, domains, arrays, tsvector columns filled by the film fulltext trigger, the
-- partitioned payment table (rows in partitions with and without their own foreign keys).
INSERT INTO public.country (country_id, country, last_update)
SELECT i, 'Country ' || %(k)s || '-' || i, timestamptz '2022-01-01 00:00+00' + i * interval '1 hour'
FROM generate_series(1, 20 + %(k)s) AS i;
SELECT setval('public.country_country_id_seq', 20 + %(k)s);

INSERT INTO public.city (city_id, city, country_id, last_update)
SELECT i, 'City ' || %(k)s || '-' || i, 1 + i %% (20 + %(k)s), timestamptz '2022-01-02 00:00+00' + i * interval '1 minute'
FROM generate_series(1, 60 + 5 * %(k)s) AS i;
SELECT setval('public.city_city_id_seq', 60 + 5 * %(k)s);

INSERT INTO public.address (address_id, address, address2, district, city_id, postal_code, phone, last_update)
SELECT i, i || ' Main Street', CASE WHEN i %% 3 = 0 THEN NULL ELSE '' END, 'District ' || (i %% 7),
       1 + i %% (60 + 5 * %(k)s), lpad((i * 37 + %(k)s)::text, 5, '0'), '+1-555-' || lpad(i::text, 4, '0'),
       timestamptz '2022-01-03 00:00+00' + i * interval '1 minute'
FROM generate_series(1, 300 + 10 * %(k)s) AS i;
SELECT setval('public.address_address_id_seq', 300 + 10 * %(k)s);

-- store i is managed by staff i (no foreign key on manager_staff_id, a unique index)
INSERT INTO public.store (store_id, manager_staff_id, address_id, last_update)
SELECT i, i, i, timestamptz '2022-01-04 00:00+00' FROM generate_series(1, 20 + 3 * %(k)s) AS i;
SELECT setval('public.store_store_id_seq', 20 + 3 * %(k)s);

INSERT INTO public.staff (staff_id, first_name, last_name, address_id, email, store_id, active, username,
                          password, last_update, picture)
SELECT i, 'Staff' || i, 'Tenant' || %(k)s, 100 + i, 'staff' || i || '@t' || %(k)s || '.example', i,
       i %% 5 <> 0, 'staff' || i, md5('pw' || i || %(k)s), timestamptz '2022-01-05 00:00+00',
       CASE WHEN i %% 2 = 0 THEN decode(md5(i::text), 'hex') END
FROM generate_series(1, 20 + 3 * %(k)s) AS i;
SELECT setval('public.staff_staff_id_seq', 20 + 3 * %(k)s);

INSERT INTO public.customer (customer_id, store_id, first_name, last_name, email, address_id, activebool,
                             create_date, last_update, active, uuid)
SELECT i, 1 + i %% (20 + 3 * %(k)s), 'First' || i, 'Last' || (i %% 50) || '-' || %(k)s,
       CASE WHEN i %% 10 = 0 THEN NULL ELSE 'c' || i || '@t' || %(k)s || '.example' END,
       1 + i %% (300 + 10 * %(k)s), i %% 9 <> 0, date '2022-02-14' + i, timestamptz '2022-02-14 00:00+00' + i * interval '1 hour',
       i %% 2, md5('customer' || %(k)s || '-' || i)::uuid
FROM generate_series(1, 300 + 20 * %(k)s) AS i;
SELECT setval('public.customer_customer_id_seq', 300 + 20 * %(k)s);

INSERT INTO public.language (language_id, name, last_update)
SELECT i, (ARRAY['English', 'Italian', 'Japanese', 'Mandarin', 'French', 'German'])[i],
       timestamptz '2022-01-06 00:00+00'
FROM generate_series(1, 6) AS i;
SELECT setval('public.language_language_id_seq', 6);

-- fulltext is left to the film_fulltext_trigger (tsvector_update_trigger), as pagila's loader does
INSERT INTO public.film (film_id, title, description, release_year, language_id, original_language_id,
                         rental_duration, rental_rate, length, replacement_cost, rating, last_update,
                         special_features)
SELECT i, 'Film ' || %(k)s || '-' || i, 'A ' || (ARRAY['Epic', 'Touching', 'Boring', 'Fateful'])[1 + i %% 4]
       || ' story of tenant ' || %(k)s, 1990 + i %% 30, 1 + i %% 6, CASE WHEN i %% 4 = 0 THEN 1 + (i + 1) %% 6 END,
       3 + i %% 5, 0.99 + (i %% 5), 40 + i %% 140, 9.99 + (i %% 20),
       (ARRAY['G', 'PG', 'PG-13', 'R', 'NC-17'])[1 + (i + %(k)s) %% 5]::public.mpaa_rating,
       timestamptz '2022-01-07 00:00+00' + i * interval '1 minute',
       CASE i %% 6 WHEN 0 THEN NULL WHEN 1 THEN '{Trailers}'::text[]
            WHEN 2 THEN '{Commentaries,"Deleted Scenes"}' WHEN 3 THEN '{"Behind the Scenes",Trailers}'
            WHEN 4 THEN '{"Deleted Scenes",NULL}' ELSE '{}' END
FROM generate_series(1, 250 + 10 * %(k)s) AS i;
SELECT setval('public.film_film_id_seq', 250 + 10 * %(k)s);

INSERT INTO public.actor (actor_id, first_name, last_name, last_update)
SELECT i, 'ACTOR' || i, 'T' || %(k)s || 'NAME' || (i %% 40), timestamptz '2022-01-08 00:00+00'
FROM generate_series(1, 200 + 10 * %(k)s) AS i;
SELECT setval('public.actor_actor_id_seq', 200 + 10 * %(k)s);

INSERT INTO public.category (category_id, name, last_update)
SELECT i, 'Category ' || i, timestamptz '2022-01-09 00:00+00' FROM generate_series(1, 16) AS i;
SELECT setval('public.category_category_id_seq', 16);

INSERT INTO public.film_actor (actor_id, film_id, last_update)
SELECT DISTINCT 1 + (f * j * 7 + %(k)s) %% (200 + 10 * %(k)s), f, timestamptz '2022-01-10 00:00+00'
FROM generate_series(1, 250 + 10 * %(k)s) AS f, generate_series(1, 2) AS j;

INSERT INTO public.film_category (film_id, category_id, last_update)
SELECT f, 1 + (f + %(k)s) %% 16, timestamptz '2022-01-11 00:00+00' FROM generate_series(1, 250 + 10 * %(k)s) AS f;

INSERT INTO public.film_embedding (film_id, embedding, last_update)
SELECT f, ARRAY(SELECT ((f * d + %(k)s) %% 97) / 97.0 FROM generate_series(1, 20) AS d)::real[],
       timestamptz '2022-01-12 00:00+00'
FROM generate_series(1, 250 + 10 * %(k)s) AS f WHERE f %% 2 = 0;

INSERT INTO public.inventory (inventory_id, film_id, store_id, last_update)
SELECT i, 1 + i %% (250 + 10 * %(k)s), 1 + i %% (20 + 3 * %(k)s), timestamptz '2022-01-13 00:00+00'
FROM generate_series(1, 400 + 20 * %(k)s) AS i;
SELECT setval('public.inventory_inventory_id_seq', 400 + 20 * %(k)s);

INSERT INTO public.rental (rental_id, rental_date, inventory_id, customer_id, return_date, staff_id,
                           last_update, uuid)
SELECT i, timestamptz '2022-01-01 10:00+00' + i * interval '13 hours', 1 + i %% (400 + 20 * %(k)s),
       1 + i %% (300 + 20 * %(k)s),
       CASE WHEN i %% 11 = 0 THEN NULL ELSE timestamptz '2022-01-03 10:00+00' + i * interval '13 hours' END,
       1 + i %% (20 + 3 * %(k)s), timestamptz '2022-01-14 00:00+00', md5('rental' || %(k)s || '-' || i)::uuid
FROM generate_series(1, 500 + 25 * %(k)s) AS i;
SELECT setval('public.rental_rental_id_seq', 500 + 25 * %(k)s);

-- payments from January 2022 to mid 2023: the first six months' partitions have foreign keys of their own
INSERT INTO public.payment (payment_id, customer_id, staff_id, rental_id, amount, payment_date, uuid)
SELECT i, 1 + i %% (300 + 20 * %(k)s), 1 + i %% (20 + 3 * %(k)s), 1 + i %% (500 + 25 * %(k)s),
       round((0.99 + (i * 7 %% 1000) / 100.0)::numeric, 2),
       timestamptz '2022-01-01 00:00+00' + i * interval '17 hours' + %(k)s * interval '1 minute',
       md5('payment' || %(k)s || '-' || i)::uuid
FROM generate_series(1, 700 + 30 * %(k)s) AS i;
SELECT setval('public.payment_payment_id_seq', 700 + 30 * %(k)s);
