"""Initial schema: every table of queue_service/postgres/tables.py.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 19:53:14.184027
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('project', sa.Text(), nullable=True),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('token_hash', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("role IN ('viewer','agent','admin')", name=op.f('ck_api_tokens_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('projects',
    sa.Column('slug', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('key_prefix', sa.Text(), nullable=False),
    sa.Column('workspace', sa.Text(), nullable=True),
    sa.Column('next_seq', sa.BigInteger(), server_default=sa.text('1'), nullable=False),
    sa.Column('last_task_seq', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('version', sa.BigInteger(), server_default=sa.text('1'), nullable=False),
    sa.PrimaryKeyConstraint('slug', name=op.f('pk_projects'))
    )
    op.create_table('events',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('project', sa.Text(), nullable=False),
    sa.Column('task_key', sa.Text(), nullable=True),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=True),
    sa.Column('version', sa.BigInteger(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.ForeignKeyConstraint(['project'], ['projects.slug'], name=op.f('fk_events_project_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_index('ix_events_project_id', 'events', ['project', 'id'], unique=False)
    op.create_table('missions',
    sa.Column('project', sa.Text(), nullable=False),
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default=sa.text("'active'"), nullable=False),
    sa.Column('tasks_file', sa.Text(), server_default=sa.text("'TASKS.md'"), nullable=False),
    sa.Column('position', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('version', sa.BigInteger(), server_default=sa.text('1'), nullable=False),
    sa.CheckConstraint("status IN ('pending','active','completed')", name=op.f('ck_missions_status')),
    sa.ForeignKeyConstraint(['project'], ['projects.slug'], name=op.f('fk_missions_project_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project', 'id', name=op.f('pk_missions'))
    )
    op.create_table('sync_state',
    sa.Column('project', sa.Text(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('state', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['project'], ['projects.slug'], name=op.f('fk_sync_state_project_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project', 'path', name=op.f('pk_sync_state'))
    )
    op.create_table('milestones',
    sa.Column('project', sa.Text(), nullable=False),
    sa.Column('mission', sa.Text(), nullable=False),
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('position', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint("status IN ('pending','active','completed')", name=op.f('ck_milestones_status')),
    sa.ForeignKeyConstraint(['project', 'mission'], ['missions.project', 'missions.id'], name=op.f('fk_milestones_project_mission_missions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project', 'mission', 'id', name=op.f('pk_milestones'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('project', sa.Text(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), server_default=sa.text("''"), nullable=False),
    sa.Column('status', sa.Text(), server_default=sa.text("'not-started'"), nullable=False),
    sa.Column('role', sa.Text(), server_default=sa.text("'default'"), nullable=False),
    sa.Column('priority', sa.Text(), server_default=sa.text("'P2'"), nullable=False),
    sa.Column('assignee', sa.Text(), nullable=True),
    sa.Column('mission', sa.Text(), server_default=sa.text("'default'"), nullable=False),
    sa.Column('milestone', sa.Text(), nullable=True),
    sa.Column('labels', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('extra', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('max_attempts', sa.Integer(), server_default=sa.text('3'), nullable=False),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.Text(), nullable=True),
    sa.Column('result', postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('blocked_reason', sa.Text(), nullable=True),
    sa.Column('lease_holder', sa.Text(), nullable=True),
    sa.Column('lease_token', sa.Text(), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pending_deps', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('version', sa.BigInteger(), server_default=sa.text('1'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("priority IN ('P0','P1','P2','P3')", name=op.f('ck_tasks_priority')),
    sa.CheckConstraint("status IN ('not-started','in-progress','needs-qa','done','blocked','failed','cancelled')", name=op.f('ck_tasks_status')),
    sa.CheckConstraint('pending_deps >= 0', name=op.f('ck_tasks_pending_deps')),
    sa.ForeignKeyConstraint(['project', 'mission'], ['missions.project', 'missions.id'], name=op.f('fk_tasks_project_mission_missions')),
    sa.ForeignKeyConstraint(['project'], ['projects.slug'], name=op.f('fk_tasks_project_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('project', 'key', name=op.f('uq_tasks_project_key')),
    sa.UniqueConstraint('project', 'seq', name=op.f('uq_tasks_project_seq'))
    )
    op.create_index('ix_tasks_dead_letter', 'tasks', ['project', 'updated_at'], unique=False, postgresql_where=sa.text("status = 'failed'"))
    op.create_index('ix_tasks_lease_expiry', 'tasks', ['lease_expires_at'], unique=False, postgresql_where=sa.text("status = 'in-progress'"))
    op.create_index('ix_tasks_not_before', 'tasks', ['not_before'], unique=False, postgresql_where=sa.text("status = 'not-started' AND not_before IS NOT NULL"))
    op.create_index('ix_tasks_project_status', 'tasks', ['project', 'status'], unique=False)
    op.create_index('ix_tasks_ready', 'tasks', ['project', 'role', 'priority', 'seq'], unique=False, postgresql_where=sa.text("status = 'not-started' AND pending_deps = 0"))
    op.create_index('uq_tasks_project_idempotency_key', 'tasks', ['project', 'idempotency_key'], unique=True, postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.create_table('notes',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('author', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_notes_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notes'))
    )
    op.create_index('ix_notes_task_id', 'notes', ['task_id', 'id'], unique=False)
    op.create_table('task_dependencies',
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('depends_on_id', sa.BigInteger(), nullable=False),
    sa.Column('position', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.ForeignKeyConstraint(['depends_on_id'], ['tasks.id'], name=op.f('fk_task_dependencies_depends_on_id_tasks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_dependencies_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'depends_on_id', name=op.f('pk_task_dependencies'))
    )
    op.create_index('ix_task_dependencies_depends_on_id', 'task_dependencies', ['depends_on_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_task_dependencies_depends_on_id', table_name='task_dependencies')
    op.drop_table('task_dependencies')
    op.drop_index('ix_notes_task_id', table_name='notes')
    op.drop_table('notes')
    op.drop_index('uq_tasks_project_idempotency_key', table_name='tasks', postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.drop_index('ix_tasks_ready', table_name='tasks', postgresql_where=sa.text("status = 'not-started' AND pending_deps = 0"))
    op.drop_index('ix_tasks_project_status', table_name='tasks')
    op.drop_index('ix_tasks_not_before', table_name='tasks', postgresql_where=sa.text("status = 'not-started' AND not_before IS NOT NULL"))
    op.drop_index('ix_tasks_lease_expiry', table_name='tasks', postgresql_where=sa.text("status = 'in-progress'"))
    op.drop_index('ix_tasks_dead_letter', table_name='tasks', postgresql_where=sa.text("status = 'failed'"))
    op.drop_table('tasks')
    op.drop_table('milestones')
    op.drop_table('sync_state')
    op.drop_table('missions')
    op.drop_index('ix_events_project_id', table_name='events')
    op.drop_table('events')
    op.drop_table('projects')
    op.drop_table('api_tokens')
